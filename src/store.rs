//! `TokenStore`: issue, rotate and revoke refresh tokens through the SQL API.
//!
//! Each SQL function has one Rust function here that takes any client or
//! transaction (`*_with`), so callers can compose them with their own work;
//! [`TokenStore`] runs the same functions on a pooled connection. All of them
//! use the database server's clock: the application never chooses the time.
//! The `*_with` functions call schema `auth`; [`TokenStore::with_schema`]
//! calls another.
//!
//! Answer every outcome but [`Rotation::Rotated`] to the client the same way
//! (e.g. HTTP 401 "sign in again"): telling `Invalid` from `Unknown` or
//! `ReuseDetected` would tell a forger what it guessed right.
//!
//! ```no_run
//! use token_janitor::store::{DEFAULT_TTL, issue_with};
//! use token_janitor::{DatabaseUrl, TokenStore};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = DatabaseUrl::parse("postgres://app@localhost/app")?.pool(8);
//! // Through the store, on a pooled connection of its own:
//! let store = TokenStore::new(pool.clone());
//! let first = store.issue("user-42").await?;
//! // Or on the application's transaction, with its own writes (a pooled
//! // transaction derefs to the driver's, which these functions take):
//! let mut client = pool.get().await?;
//! let tx = client.transaction().await?;
//! let second = issue_with(&*tx, "user-42", DEFAULT_TTL).await?;
//! tx.commit().await?;
//! # drop((first, second));
//! # Ok(())
//! # }
//! ```

use std::time::{Duration, SystemTime};

use deadpool_postgres::{Object, Pool, StatementCache};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{GenericClient, Row, Statement};
use uuid::Uuid;

use crate::error::{Error, Result, db};
use crate::schema::Schema;
use crate::token::{self, RefreshToken, Secret};

/// Default refresh token lifetime: 30 days.
///
/// ```
/// use std::time::Duration;
/// use token_janitor::store::DEFAULT_TTL;
///
/// assert_eq!(DEFAULT_TTL, Duration::from_secs(30 * 24 * 3600));
/// ```
pub const DEFAULT_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// How many sessions [`TokenStore::list_sessions`] returns at most.
const DEFAULT_LIST_LIMIT: i32 = 100;

/// A freshly issued token and where it sits. `Debug` shows neither the
/// token, the session id nor the user id.
///
/// ```
/// # async fn handler(store: &token_janitor::TokenStore) -> token_janitor::Result<()> {
/// let issued = store.issue("user-42").await?;
/// // The client gets the token, and nothing else of it; the session id
/// // names this sign-in (a device in a session list, a sign-out).
/// let response = format!(r#"{{"refresh_token":"{}"}}"#, issued.token.expose());
/// println!("{} signed in on session {}", issued.user_id, issued.session_id);
/// # drop(response);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Issued {
    /// Hand this to the client; it is never stored.
    pub token: RefreshToken,
    /// The session (token family).
    pub session_id: Uuid,
    /// Whose session it is: the user id given to [`TokenStore::issue`]. On a
    /// rotation, this tells the refresh endpoint whom to issue an access
    /// token for, which the token string alone does not.
    pub user_id: String,
    /// 0 for a new session, +1 per rotation.
    pub generation: i32,
    /// When this token stops being accepted.
    pub expires_at: SystemTime,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued")
            .field("token", &self.token)
            .field("session_id", &"<redacted>")
            .field("user_id", &"<redacted>")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The result of presenting a token for rotation (`auth.rotate_token` outcomes).
/// Tell the client nothing but "rotated" or "sign in again".
///
/// ```
/// use token_janitor::Rotation;
///
/// # async fn refresh(store: &token_janitor::TokenStore) -> token_janitor::Result<u16> {
/// # let presented = "rt2_...";
/// Ok(match store.rotate(presented).await? {
///     Rotation::Rotated(next) => {
///         println!("new token for {}: {}", next.user_id, next.token.expose());
///         200
///     }
///     // Replayed, expired, revoked, forged or unknown: one answer for all,
///     // so that a forger learns nothing of what it guessed right.
///     _ => 401,
/// })
/// # }
/// ```
#[derive(Debug, Clone)]
pub enum Rotation {
    /// The token was live: here is its successor. Presented again within the
    /// policy's `reuse_grace` (a lost response, two tabs), the same token
    /// gives the same successor.
    Rotated(Issued),
    /// A genuine older token was replayed: the whole session is now revoked
    /// and `auth.security_events` records it.
    ReuseDetected,
    /// The token or its session has expired.
    Expired,
    /// The token or its session was revoked.
    Revoked,
    /// Not provably genuine (wrong secret or authenticator): nothing changed.
    Invalid,
    /// No such session, or a generation it never issued.
    Unknown,
}

/// Why a session is revoked.
///
/// ```
/// use token_janitor::RevokeReason;
/// # use uuid::Uuid;
///
/// # async fn admin(store: &token_janitor::TokenStore, session_id: Uuid) -> token_janitor::Result<()> {
/// // A support agent signs out a stolen laptop.
/// let tokens = store.revoke_session(session_id, RevokeReason::Admin).await?;
/// println!("revoked {tokens} token(s)");
/// # Ok(())
/// # }
/// ```
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
    const ALL: [RevokeReason; 3] = [Self::Logout, Self::Admin, Self::ReuseDetected];

    /// The SQL spelling: what `auth.sessions.revoke_reason` holds.
    ///
    /// ```
    /// use token_janitor::RevokeReason;
    ///
    /// assert_eq!(RevokeReason::ReuseDetected.as_str(), "reuse_detected");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::Admin => "admin",
            Self::ReuseDetected => "reuse_detected",
        }
    }

    /// The reason a session row holds, from its SQL spelling.
    fn parse(text: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|reason| reason.as_str() == text)
            .ok_or_else(|| Error::UnexpectedResponse(format!("a session revoked for '{text}'")))
    }
}

/// What a new session is bound to and labelled with (`auth.issue_token`'s
/// `p_client_id`, `p_dpop_jkt` and `p_device_label`). Default: none of them.
///
/// A session bound to a client id or a DPoP key rotates only for a caller
/// that presents the same ([`RotateOptions`]); anything else reads
/// [`Rotation::Invalid`] and changes nothing. A session issued without a
/// binding stays unbound.
///
/// ```
/// use token_janitor::IssueOptions;
///
/// # async fn sign_in(store: &token_janitor::TokenStore) -> token_janitor::Result<()> {
/// let options = IssueOptions::default()
///     .client_id("mobile-app")
///     .device_label("Pixel 9, Android 16");
/// let issued = store.issue_with_options("user-42", &options).await?;
/// # drop(issued);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IssueOptions {
    client_id: Option<String>,
    dpop_jkt: Option<String>,
    device_label: Option<String>,
}

impl IssueOptions {
    /// Binds the session to an OAuth client id (1 to 256 characters; RFC
    /// 6819 §5.2.2.2). Default: none.
    ///
    /// ```
    /// use token_janitor::IssueOptions;
    ///
    /// assert_ne!(IssueOptions::default().client_id("web"), IssueOptions::default());
    /// ```
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// Binds the session to a DPoP key by its JWK SHA-256 thumbprint (RFC
    /// 7638: 43 base64url characters; RFC 9449 §5). Default: none.
    ///
    /// ```
    /// use token_janitor::IssueOptions;
    ///
    /// let options = IssueOptions::default().dpop_jkt("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    /// # drop(options);
    /// ```
    pub fn dpop_jkt(mut self, jkt: impl Into<String>) -> Self {
        self.dpop_jkt = Some(jkt.into());
        self
    }

    /// A label for the device list, e.g. "Firefox on Linux" (1 to 100
    /// characters). Default: none.
    ///
    /// ```
    /// use token_janitor::IssueOptions;
    ///
    /// let options = IssueOptions::default().device_label("Safari on iPhone");
    /// # drop(options);
    /// ```
    pub fn device_label(mut self, label: impl Into<String>) -> Self {
        self.device_label = Some(label.into());
        self
    }
}

/// What a rotation presents of a session's binding (`auth.rotate_token`'s
/// `p_client_id` and `p_dpop_jkt`): the client id the caller authenticated
/// and the thumbprint of the key its DPoP proof was verified with. Default:
/// neither, which only an unbound session accepts.
///
/// ```
/// use token_janitor::{RotateOptions, Rotation};
///
/// # async fn refresh(store: &token_janitor::TokenStore, presented: &str) -> token_janitor::Result<()> {
/// // The OAuth client authenticated as mobile-app, the client the session is bound to.
/// let options = RotateOptions::default().client_id("mobile-app");
/// if let Rotation::Rotated(next) = store.rotate_with_options(presented, &options).await? {
///     println!("refreshed {}", next.session_id);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RotateOptions {
    client_id: Option<String>,
    dpop_jkt: Option<String>,
}

impl RotateOptions {
    /// The client id the caller authenticated as. Default: none.
    ///
    /// ```
    /// use token_janitor::RotateOptions;
    ///
    /// let options = RotateOptions::default().client_id("web");
    /// # drop(options);
    /// ```
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = Some(client_id.into());
        self
    }

    /// The JWK SHA-256 thumbprint of the key the request's DPoP proof was
    /// verified with. Default: none.
    ///
    /// ```
    /// use token_janitor::RotateOptions;
    ///
    /// let options = RotateOptions::default().dpop_jkt("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    /// # drop(options);
    /// ```
    pub fn dpop_jkt(mut self, jkt: impl Into<String>) -> Self {
        self.dpop_jkt = Some(jkt.into());
        self
    }
}

/// One session as `auth.list_sessions` returns it: a row of a device list.
/// `Debug` leaves the session id out.
///
/// ```
/// use std::time::SystemTime;
///
/// # async fn devices(store: &token_janitor::TokenStore) -> token_janitor::Result<()> {
/// for session in store.list_sessions("user-42").await? {
///     let label = session.device_label.as_deref().unwrap_or("unknown device");
///     match session.revoke_reason {
///         Some(reason) => println!("{label}: signed out ({})", reason.as_str()),
///         None if session.refresh_expires_at > SystemTime::now() => println!("{label}: active"),
///         None => println!("{label}: expired"),
///     }
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone, PartialEq, Eq)]
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
    pub revoke_reason: Option<RevokeReason>,
    /// When its newest token was issued: the last login or refresh.
    pub last_used_at: SystemTime,
    /// The label given at issue ([`IssueOptions::device_label`]).
    pub device_label: Option<String>,
    /// The client id it is bound to ([`IssueOptions::client_id`]).
    pub client_id: Option<String>,
}

impl std::fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInfo")
            .field("session_id", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("generation", &self.generation)
            .field("refresh_expires_at", &self.refresh_expires_at)
            .field("revoked_at", &self.revoked_at)
            .field("revoke_reason", &self.revoke_reason)
            .field("last_used_at", &self.last_used_at)
            .field("device_label", &self.device_label)
            .field("client_id", &self.client_id)
            .finish()
    }
}

/// Whose clock a call uses.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Clock {
    /// The database server's clock at the call (`clock_timestamp()`): the
    /// server-clock form of each function.
    Server,
    /// A driven time: the clock-driven form (owner only), which only this
    /// crate's tests and demo call (`testing::simulated`).
    #[cfg(feature = "testing")]
    At(SystemTime),
}

impl Clock {
    /// The time to pass as `p_now`, when the clock is driven.
    fn driven(&self) -> Option<&SystemTime> {
        match self {
            Clock::Server => None,
            #[cfg(feature = "testing")]
            Clock::At(now) => Some(now),
        }
    }
}

/// A call of `function` with `args` (`name => $n`, numbered from 1, each
/// with the type its parameter is sent as), plus `p_now` when the clock is
/// driven; `select` picks the output columns (`r` for a function that
/// returns one value). Returns the statement and its parameters' types.
/// Every name in it is schema-qualified: it runs on the application's
/// connection, under whatever search_path the database or the role sets (a
/// `public.make_interval` of the same signature would otherwise run in its
/// place).
fn call<'a>(
    schema: &Schema,
    select: &str,
    function: &str,
    args: &[(&str, Type)],
    params: &mut Vec<&'a (dyn ToSql + Sync)>,
    clock: &'a Clock,
) -> (String, Vec<Type>) {
    let mut named: Vec<String> = args
        .iter()
        .enumerate()
        .map(|(i, (arg, _))| arg.replace("$n", &format!("${}", i + 1)))
        .collect();
    let mut types: Vec<Type> = args.iter().map(|(_, t)| t.clone()).collect();
    if let Some(now) = clock.driven() {
        params.push(now);
        named.push(format!("p_now => ${}", params.len()));
        types.push(Type::TIMESTAMPTZ);
    }
    let sql = schema
        .sql(&format!(
            "SELECT {select} FROM {function}({}) r",
            named.join(", ")
        ))
        .into_owned();
    (sql, types)
}

/// Where a call's statement runs: a client, and for [`TokenStore`]'s pooled
/// connections the connection's statement cache. A cached statement is parsed
/// once per connection, then only bound and executed: one round trip a call,
/// and after its first five executions PostgreSQL reuses one generic plan
/// instead of planning each call. On the caller's own client (the `*_with`
/// functions) each call is sent as an unnamed statement with its parameters'
/// types: one round trip too, parsed and planned every time, and nothing left
/// on the server between transactions, so it also works behind a pooler that
/// keeps no prepared statement.
pub(crate) struct On<'a, C> {
    client: &'a C,
    cache: Option<&'a StatementCache>,
}

impl<'a, C: GenericClient> On<'a, C> {
    /// Each call sent as an unnamed statement on `client`.
    pub(crate) fn client(client: &'a C) -> Self {
        Self {
            client,
            cache: None,
        }
    }

    async fn query_one(
        &self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Row, tokio_postgres::Error> {
        let Some(cache) = self.cache else {
            return self
                .client
                .query_typed_one(sql, &typed(types, params))
                .await;
        };
        let client = self.client;
        self.cached(cache, sql, types, move |statement| async move {
            client.query_one(&statement, params).await
        })
        .await
    }

    async fn query(
        &self,
        sql: &str,
        types: &[Type],
        params: &[&(dyn ToSql + Sync)],
    ) -> std::result::Result<Vec<Row>, tokio_postgres::Error> {
        let Some(cache) = self.cache else {
            return self.client.query_typed(sql, &typed(types, params)).await;
        };
        let client = self.client;
        self.cached(cache, sql, types, move |statement| async move {
            client.query(&statement, params).await
        })
        .await
    }

    /// Runs `execute` with `sql` prepared from `cache`. A cached statement
    /// the server no longer has as it was is prepared again and run once
    /// more: one deallocated on the connection (`DISCARD ALL` or
    /// `DEALLOCATE ALL` in a pool's custom recycling), or one whose result
    /// columns a `migrate` changed (PostgreSQL re-plans a statement whose
    /// routines were replaced, but refuses one whose result type changed).
    /// Both fail at Bind, before anything runs, and a pooled call is its own
    /// transaction, so running it again runs it once. After any other error
    /// from the server the statement leaves the cache too, and the
    /// connection's next call prepares it again: an error that the
    /// statement as prepared keeps causing (a routine whose parameter types
    /// a `migrate` changed) fails one call, not every call on the
    /// connection.
    async fn cached<T, F, Fut>(
        &self,
        cache: &StatementCache,
        sql: &str,
        types: &[Type],
        execute: F,
    ) -> std::result::Result<T, tokio_postgres::Error>
    where
        F: Fn(Statement) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, tokio_postgres::Error>>,
    {
        let client = self.client.client();
        match execute(cache.prepare_typed(client, sql, types).await?).await {
            Err(err) if err.as_db_error().is_some() => {
                cache.remove(sql, types);
                if !stale(&err) {
                    return Err(err);
                }
                execute(cache.prepare_typed(client, sql, types).await?).await
            }
            answer => answer,
        }
    }
}

/// Each parameter with the type it is sent as.
fn typed<'p>(
    types: &[Type],
    params: &[&'p (dyn ToSql + Sync)],
) -> Vec<(&'p (dyn ToSql + Sync), Type)> {
    debug_assert_eq!(types.len(), params.len(), "a type for every parameter");
    params.iter().copied().zip(types.iter().cloned()).collect()
}

/// Whether `err` says the server no longer has a cached statement as it was
/// prepared: deallocated (26000), or its result type changed (0A000 from
/// the plan cache's revalidation; matched by routine, which is never
/// translated, as the message may be).
fn stale(err: &tokio_postgres::Error) -> bool {
    err.as_db_error().is_some_and(|e| {
        *e.code() == SqlState::INVALID_SQL_STATEMENT_NAME
            || (*e.code() == SqlState::FEATURE_NOT_SUPPORTED
                && e.routine() == Some("RevalidateCachedQuery"))
    })
}

/// The token lifetime, sent in seconds: every call that issues a token takes it.
const TTL_ARG: (&str, Type) = (
    "p_ttl => pg_catalog.make_interval(secs => $n)",
    Type::FLOAT8,
);

fn seconds(ttl: Duration) -> f64 {
    ttl.as_secs_f64()
}

pub(crate) async fn issue_on<C: GenericClient>(
    on: On<'_, C>,
    schema: &Schema,
    user_id: &str,
    ttl: Duration,
    options: &IssueOptions,
    clock: Clock,
) -> Result<Issued> {
    let secret = Secret::generate();
    let (hash, ttl) = (secret.hash(), seconds(ttl));
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &user_id,
        &hash,
        &ttl,
        &options.client_id,
        &options.dpop_jkt,
        &options.device_label,
    ];
    let (sql, types) = call(
        schema,
        "session_id, generation, expires_at, authenticator",
        "auth.issue_token",
        &[
            ("p_user_id => $n", Type::TEXT),
            ("p_token_hash => $n", Type::BYTEA),
            TTL_ARG,
            ("p_client_id => $n", Type::TEXT),
            ("p_dpop_jkt => $n", Type::TEXT),
            ("p_device_label => $n", Type::TEXT),
        ],
        &mut params,
        &clock,
    );
    let row = on
        .query_one(&sql, &types, &params)
        .await
        .map_err(db("issuing a refresh token"))?;
    let session_id: Uuid = row.get(0);
    let generation: i32 = row.get(1);
    Ok(Issued {
        token: secret.token(session_id, generation, row.get(3))?,
        session_id,
        user_id: user_id.to_owned(),
        generation,
        expires_at: row.get(2),
    })
}

pub(crate) async fn rotate_on<C: GenericClient>(
    on: On<'_, C>,
    schema: &Schema,
    token: &str,
    ttl: Duration,
    options: &RotateOptions,
    clock: Clock,
) -> Result<Rotation> {
    let presented = token::parse(token)?;
    let next = Secret::generate();
    let successor = presented.generation.saturating_add(1);
    let seal = presented
        .secret
        .seal(&next, presented.session_id, successor);
    let (hash, next_hash, ttl) = (presented.secret.hash(), next.hash(), seconds(ttl));
    let authenticator = presented.authenticator.map(|a| a.to_vec());
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &presented.session_id,
        &presented.generation,
        &hash,
        &next_hash,
        &ttl,
        &authenticator,
        &seal,
        &options.client_id,
        &options.dpop_jkt,
    ];
    let (sql, types) = call(
        schema,
        "outcome, generation, expires_at, authenticator, successor_seal, user_id",
        "auth.rotate_token",
        &[
            ("p_session_id => $n", Type::UUID),
            ("p_generation => $n", Type::INT4),
            ("p_token_hash => $n", Type::BYTEA),
            ("p_new_token_hash => $n", Type::BYTEA),
            TTL_ARG,
            ("p_authenticator => $n", Type::BYTEA),
            ("p_successor_seal => $n", Type::BYTEA),
            ("p_client_id => $n", Type::TEXT),
            ("p_dpop_jkt => $n", Type::TEXT),
        ],
        &mut params,
        &clock,
    );
    let row = on
        .query_one(&sql, &types, &params)
        .await
        .map_err(db("rotating a refresh token"))?;
    let outcome: &str = row.get(0);
    Ok(match outcome {
        "rotated" => {
            let generation: i32 = row.get(1);
            // A seal comes back only within the reuse grace: the successor
            // issued earlier, which this token's secret opens.
            let secret = match row.get::<_, Option<&[u8]>>(4) {
                Some(seal) => presented
                    .secret
                    .open(seal, presented.session_id, generation)?,
                None => next,
            };
            let user_id: Option<String> = row.get(5);
            Rotation::Rotated(Issued {
                token: secret.token(presented.session_id, generation, row.get(3))?,
                session_id: presented.session_id,
                user_id: user_id.ok_or_else(|| {
                    Error::UnexpectedResponse(
                        "auth.rotate_token outcome 'rotated' without a user_id".to_string(),
                    )
                })?,
                generation,
                expires_at: row.get(2),
            })
        }
        "reuse_detected" => Rotation::ReuseDetected,
        "expired" => Rotation::Expired,
        "revoked" => Rotation::Revoked,
        "invalid" => Rotation::Invalid,
        "unknown" => Rotation::Unknown,
        other => {
            return Err(Error::UnexpectedResponse(format!(
                "auth.rotate_token outcome '{other}'"
            )));
        }
    })
}

pub(crate) async fn revoke_session_on<C: GenericClient>(
    on: On<'_, C>,
    schema: &Schema,
    session_id: Uuid,
    reason: RevokeReason,
    clock: Clock,
) -> Result<i32> {
    let reason = reason.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&session_id, &reason];
    let (sql, types) = call(
        schema,
        "r",
        "auth.revoke_session",
        &[
            ("p_session_id => $n", Type::UUID),
            ("p_reason => $n", Type::TEXT),
        ],
        &mut params,
        &clock,
    );
    let row = on
        .query_one(&sql, &types, &params)
        .await
        .map_err(db("revoking a session"))?;
    Ok(row.get(0))
}

async fn revoke_token_on<C: GenericClient>(
    on: On<'_, C>,
    schema: &Schema,
    token: &str,
    reason: RevokeReason,
) -> Result<bool> {
    let presented = token::parse(token)?;
    let (hash, reason) = (presented.secret.hash(), reason.as_str());
    let authenticator = presented.authenticator.map(|a| a.to_vec());
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![
        &presented.session_id,
        &presented.generation,
        &hash,
        &reason,
        &authenticator,
    ];
    let (sql, types) = call(
        schema,
        "r",
        "auth.revoke_token",
        &[
            ("p_session_id => $n", Type::UUID),
            ("p_generation => $n", Type::INT4),
            ("p_token_hash => $n", Type::BYTEA),
            ("p_reason => $n", Type::TEXT),
            ("p_authenticator => $n", Type::BYTEA),
        ],
        &mut params,
        &Clock::Server,
    );
    let revoked: i32 = on
        .query_one(&sql, &types, &params)
        .await
        .map_err(db("revoking a presented token"))?
        .get(0);
    Ok(revoked > 0)
}

/// `auth.revoke_token`: revokes the family of a presented token when the
/// token is genuine; returns whether it did.
///
/// # Errors
/// [`crate::Error::MalformedToken`], [`crate::Error::Db`].
///
/// ```no_run
/// use token_janitor::RevokeReason;
/// use token_janitor::store::revoke_token_with;
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// # let presented = "rt2_...";
/// // RFC 7009: answer 200 whether or not the token revoked anything.
/// let revoked = revoke_token_with(&client, presented, RevokeReason::Logout).await?;
/// # drop(revoked);
/// # let _ = &mut client;
/// # Ok(())
/// # }
/// ```
pub async fn revoke_token_with<C: GenericClient>(
    client: &C,
    token: &str,
    reason: RevokeReason,
) -> Result<bool> {
    revoke_token_on(On::client(client), &Schema::default(), token, reason).await
}

pub(crate) async fn revoke_user_sessions_on<C: GenericClient>(
    on: On<'_, C>,
    schema: &Schema,
    user_id: &str,
    reason: RevokeReason,
    except: Option<Uuid>,
    clock: Clock,
) -> Result<i32> {
    let reason = reason.as_str();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&user_id, &reason, &except];
    let (sql, types) = call(
        schema,
        "r",
        "auth.revoke_user_sessions",
        &[
            ("p_user_id => $n", Type::TEXT),
            ("p_reason => $n", Type::TEXT),
            ("p_except_session_id => $n", Type::UUID),
        ],
        &mut params,
        &clock,
    );
    let row = on
        .query_one(&sql, &types, &params)
        .await
        .map_err(db("revoking a user's sessions"))?;
    Ok(row.get(0))
}

/// `auth.issue_token`: starts a session for `user_id`.
///
/// # Errors
/// [`crate::Error::Db`] with the server's message (e.g. an empty user id, a
/// TTL over the policy's max_ttl).
///
/// ```no_run
/// use token_janitor::store::{DEFAULT_TTL, issue_with};
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// // The account and its first session commit together, or neither does.
/// let tx = client.transaction().await?;
/// tx.execute("INSERT INTO app.users (id) VALUES ($1)", &[&"user-42"]).await?;
/// let issued = issue_with(&tx, "user-42", DEFAULT_TTL).await?;
/// tx.commit().await?;
/// println!("session {}", issued.session_id);
/// # Ok(())
/// # }
/// ```
pub async fn issue_with<C: GenericClient>(
    client: &C,
    user_id: &str,
    ttl: Duration,
) -> Result<Issued> {
    issue_with_options(client, user_id, ttl, &IssueOptions::default()).await
}

/// `auth.issue_token` with a binding and a device label: starts a session
/// for `user_id` as `options` say.
///
/// # Errors
/// As [`issue_with`]; [`crate::Error::Db`] naming the parameter for a
/// client id, thumbprint or label out of shape (nothing is written).
///
/// ```no_run
/// use token_janitor::IssueOptions;
/// use token_janitor::store::{DEFAULT_TTL, issue_with_options};
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// let options = IssueOptions::default().device_label("CLI on build-01");
/// let issued = issue_with_options(&client, "user-42", DEFAULT_TTL, &options).await?;
/// # drop(issued);
/// # let _ = &mut client;
/// # Ok(())
/// # }
/// ```
pub async fn issue_with_options<C: GenericClient>(
    client: &C,
    user_id: &str,
    ttl: Duration,
    options: &IssueOptions,
) -> Result<Issued> {
    issue_on(
        On::client(client),
        &Schema::default(),
        user_id,
        ttl,
        options,
        Clock::Server,
    )
    .await
}

/// `auth.rotate_token`: presents `token` (`rt2_` or `rt1_`) and, when it is
/// live, issues its successor (sealed under `token`'s secret, so that within
/// the reuse grace presenting `token` again returns the same successor).
///
/// # Errors
/// [`crate::Error::MalformedToken`] for a string that is not a token (the
/// database is not asked); [`crate::Error::Db`];
/// [`crate::Error::UnexpectedResponse`] for an outcome this library does not
/// know.
///
/// ```no_run
/// use token_janitor::Rotation;
/// use token_janitor::store::{DEFAULT_TTL, rotate_with};
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// # let presented = "rt2_...";
/// let tx = client.transaction().await?;
/// if let Rotation::Rotated(next) = rotate_with(&tx, presented, DEFAULT_TTL).await? {
///     // Recorded in the same transaction as the rotation.
///     tx.execute("UPDATE app.users SET seen_at = now() WHERE id = $1", &[&next.user_id]).await?;
/// }
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn rotate_with<C: GenericClient>(
    client: &C,
    token: &str,
    ttl: Duration,
) -> Result<Rotation> {
    rotate_with_options(client, token, ttl, &RotateOptions::default()).await
}

/// `auth.rotate_token` presenting a session's binding: as [`rotate_with`],
/// and a session bound to a client or key rotates only when `options`
/// present the same ([`Rotation::Invalid`] otherwise, nothing changed).
///
/// # Errors
/// As [`rotate_with`]; [`crate::Error::Db`] naming the parameter for a
/// client id or thumbprint out of shape (nothing changes).
///
/// ```no_run
/// use token_janitor::RotateOptions;
/// use token_janitor::store::{DEFAULT_TTL, rotate_with_options};
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// # let presented = "rt2_...";
/// let options = RotateOptions::default().dpop_jkt("0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
/// let outcome = rotate_with_options(&client, presented, DEFAULT_TTL, &options).await?;
/// # drop(outcome);
/// # let _ = &mut client;
/// # Ok(())
/// # }
/// ```
pub async fn rotate_with_options<C: GenericClient>(
    client: &C,
    token: &str,
    ttl: Duration,
    options: &RotateOptions,
) -> Result<Rotation> {
    rotate_on(
        On::client(client),
        &Schema::default(),
        token,
        ttl,
        options,
        Clock::Server,
    )
    .await
}

/// `auth.revoke_session`: returns how many tokens it revoked.
///
/// # Errors
/// [`crate::Error::Db`].
///
/// ```no_run
/// use token_janitor::RevokeReason;
/// use token_janitor::store::revoke_session_with;
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// # let session_id = uuid::Uuid::nil();
/// let tx = client.transaction().await?;
/// revoke_session_with(&tx, session_id, RevokeReason::Logout).await?;
/// tx.execute("DELETE FROM app.push_subscriptions WHERE session_id = $1", &[&session_id]).await?;
/// tx.commit().await?;
/// # Ok(())
/// # }
/// ```
pub async fn revoke_session_with<C: GenericClient>(
    client: &C,
    session_id: Uuid,
    reason: RevokeReason,
) -> Result<i32> {
    revoke_session_on(
        On::client(client),
        &Schema::default(),
        session_id,
        reason,
        Clock::Server,
    )
    .await
}

/// `auth.revoke_user_sessions`: returns how many sessions it revoked.
///
/// # Errors
/// [`crate::Error::Db`].
///
/// ```no_run
/// use token_janitor::RevokeReason;
/// use token_janitor::store::revoke_user_sessions_with;
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// // A password change signs the user out everywhere, in the same transaction.
/// let tx = client.transaction().await?;
/// tx.execute("UPDATE app.users SET password_hash = $2 WHERE id = $1", &[&"user-42", &"..."]).await?;
/// let sessions = revoke_user_sessions_with(&tx, "user-42", RevokeReason::Admin).await?;
/// tx.commit().await?;
/// println!("signed out {sessions} session(s)");
/// # Ok(())
/// # }
/// ```
pub async fn revoke_user_sessions_with<C: GenericClient>(
    client: &C,
    user_id: &str,
    reason: RevokeReason,
) -> Result<i32> {
    revoke_user_sessions_on(
        On::client(client),
        &Schema::default(),
        user_id,
        reason,
        None,
        Clock::Server,
    )
    .await
}

/// `auth.revoke_user_sessions` with `p_except_session_id`: revokes every
/// session of `user_id` but `keep` ("sign out everywhere else"); returns
/// how many it revoked.
///
/// # Errors
/// [`crate::Error::Db`].
///
/// ```no_run
/// use token_janitor::RevokeReason;
/// use token_janitor::store::revoke_user_sessions_except_with;
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// # let mine = uuid::Uuid::nil();
/// // "Sign out other devices": every session of the user but the caller's.
/// let others = revoke_user_sessions_except_with(&client, "user-42", mine, RevokeReason::Logout).await?;
/// # drop(others);
/// # let _ = &mut client;
/// # Ok(())
/// # }
/// ```
pub async fn revoke_user_sessions_except_with<C: GenericClient>(
    client: &C,
    user_id: &str,
    keep: Uuid,
    reason: RevokeReason,
) -> Result<i32> {
    revoke_user_sessions_on(
        On::client(client),
        &Schema::default(),
        user_id,
        reason,
        Some(keep),
        Clock::Server,
    )
    .await
}

/// `auth.list_sessions`: a user's sessions, newest first, at most `limit`
/// (1 to 1000).
///
/// # Errors
/// [`crate::Error::Db`] (e.g. a limit out of range).
///
/// ```no_run
/// use token_janitor::store::list_sessions_with;
/// use token_janitor::DatabaseUrl;
/// # async fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut client = DatabaseUrl::parse("postgres://app@localhost/app")?.connect().await?;
/// for session in list_sessions_with(&client, "user-42", 20).await? {
///     println!("{} generation {}", session.session_id, session.generation);
/// }
/// # let _ = &mut client;
/// # Ok(())
/// # }
/// ```
pub async fn list_sessions_with<C: GenericClient>(
    client: &C,
    user_id: &str,
    limit: i32,
) -> Result<Vec<SessionInfo>> {
    list_sessions_on(On::client(client), &Schema::default(), user_id, limit).await
}

async fn list_sessions_on<C: GenericClient>(
    on: On<'_, C>,
    schema: &Schema,
    user_id: &str,
    limit: i32,
) -> Result<Vec<SessionInfo>> {
    let rows = on
        .query(
            &schema.sql(
                "SELECT session_id, created_at, generation, refresh_expires_at, revoked_at, revoke_reason,
                        last_used_at, device_label, client_id
                 FROM auth.list_sessions(p_user_id => $1, p_limit => $2)",
            ),
            &[Type::TEXT, Type::INT4],
            &[&user_id, &limit],
        )
        .await
        .map_err(db("listing sessions"))?;
    rows.iter()
        .map(|row| {
            Ok(SessionInfo {
                session_id: row.get(0),
                created_at: row.get(1),
                generation: row.get(2),
                refresh_expires_at: row.get(3),
                revoked_at: row.get(4),
                revoke_reason: row
                    .get::<_, Option<&str>>(5)
                    .map(RevokeReason::parse)
                    .transpose()?,
                last_used_at: row.get(6),
                device_label: row.get(7),
                client_id: row.get(8),
            })
        })
        .collect()
}

/// Refresh tokens over a connection pool, with one token lifetime, on the
/// database server's clock. Answer every outcome of [`TokenStore::rotate`]
/// but [`Rotation::Rotated`] to the client the same way.
///
/// **A dropped call is cancelled on the server.** When a call's future is
/// dropped before it finishes (the caller's own timeout, a request whose
/// client went away) or its statement timeout expires, its connection leaves
/// the pool, the server is asked to cancel the query (tokio-postgres'
/// `CancelToken`) and the connection is closed: the cancel can reach no other
/// caller's query. A dropped caller sees nothing; on a statement timeout it
/// sees [`crate::Error::StatementTimeout`]. Either way the call either
/// committed on the server before the cancel arrived or changed nothing: a
/// rotation that committed but whose answer was lost is answered again, with
/// the same successor, when the token is presented again within the
/// policy's `reuse_grace`. The `*_with` functions, on the caller's own client,
/// cancel nothing.
///
/// **Each pooled connection prepares a call's statement once** and keeps it,
/// so later calls on it take one round trip, and are neither parsed nor,
/// after their first few, planned. A statement the server no longer has as
/// it was (deallocated by a pool's custom recycling, or its result columns
/// changed by a `migrate`) is prepared again and the call made once more,
/// before anything ran; after any other server error the statement is
/// prepared again at the connection's next call. Behind PgBouncer in
/// transaction mode, enable its `max_prepared_statements`.
///
/// ```no_run
/// use std::time::Duration;
/// use token_janitor::{DatabaseUrl, TokenStore};
///
/// # fn build() -> token_janitor::Result<TokenStore> {
/// let pool = DatabaseUrl::parse("postgres://app@db.internal/app?sslmode=verify-full")?.pool(16);
/// let store = TokenStore::new(pool)
///     .with_ttl(Duration::from_secs(14 * 24 * 3600))
///     .with_statement_timeout(Duration::from_secs(2));
/// # Ok(store)
/// # }
/// ```
#[derive(Clone)]
pub struct TokenStore {
    pool: Pool,
    schema: Schema,
    ttl: Duration,
    statement_timeout: Option<Duration>,
}

impl std::fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStore")
            .field("schema", &self.schema)
            .field("ttl", &self.ttl)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

/// One call's pooled connection. Ended by [`Call::end`], it goes back to the
/// pool; dropped before that (the call's future was dropped, or its
/// statement timeout expired), it is taken out of the pool, its query is
/// cancelled on the server and it is closed.
struct Call {
    connection: Option<Object>,
}

impl Call {
    async fn start(pool: &Pool) -> Result<Self> {
        Ok(Self {
            connection: Some(pool.get().await?),
        })
    }

    /// The connection, with its statement cache.
    fn on(&self) -> On<'_, tokio_postgres::Client> {
        let connection = self
            .connection
            .as_ref()
            .expect("a call's connection is there until it ends");
        On {
            client: connection,
            cache: Some(&connection.statement_cache),
        }
    }

    /// Returns the connection to the pool unless the query timed out.
    fn end<T>(mut self, answer: Result<T>) -> Result<T> {
        if !matches!(answer, Err(Error::StatementTimeout { .. })) {
            drop(self.connection.take());
        }
        answer
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        let Some(connection) = self.connection.take() else {
            return;
        };
        let client = Object::take(connection);
        let (Ok(runtime), Ok(tls)) = (
            tokio::runtime::Handle::try_current(),
            crate::db::cancel_tls(),
        ) else {
            // Closing the connection is all that is left: the server ends
            // the query when it next writes to the closed socket.
            return;
        };
        let cancel = client.cancel_token();
        runtime.spawn(async move {
            if let Err(err) = cancel.cancel_query(tls).await {
                tracing::warn!(error = %crate::error::describe(&err),
                    "could not cancel the query of a dropped TokenStore call");
            }
            drop(client);
        });
    }
}

impl TokenStore {
    /// A store on `pool` issuing tokens that live [`DEFAULT_TTL`] (30 days),
    /// with no statement timeout, in schema `auth`.
    ///
    /// ```
    /// use token_janitor::{DatabaseUrl, TokenStore};
    /// # fn build() -> token_janitor::Result<()> {
    /// let store = TokenStore::new(DatabaseUrl::parse("postgres://app@localhost/app")?.pool(8));
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            schema: Schema::default(),
            ttl: DEFAULT_TTL,
            statement_timeout: None,
        }
    }

    /// Calls the token functions of the install in `schema` (migrate
    /// `--schema`). Default: `auth`.
    ///
    /// ```
    /// use token_janitor::Schema;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// // Installed with `token-janitor migrate --schema tokens`, beside another auth.
    /// let store = store.with_schema(Schema::new("tokens")?);
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_schema(mut self, schema: Schema) -> Self {
        self.schema = schema;
        self
    }

    /// Sets the lifetime of issued tokens. Default: [`DEFAULT_TTL`].
    ///
    /// ```
    /// use std::time::Duration;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// // Must be at most the policy's max_ttl (auth.cleanup_policy).
    /// let store = store.with_ttl(Duration::from_secs(7 * 24 * 3600));
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Bounds how long each call's query may run once it has a connection
    /// (getting one is bounded by the pool's timeouts): past it the query is
    /// cancelled on the server and the call returns
    /// [`crate::Error::StatementTimeout`]. Default: none, a call waits as
    /// long as the server takes (e.g. behind a lock).
    ///
    /// ```
    /// use std::time::Duration;
    /// use token_janitor::Error;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// let store = store.with_statement_timeout(Duration::from_millis(1500));
    /// match store.rotate("rt2_...").await {
    ///     Err(Error::StatementTimeout { call, .. }) => println!("{call} was cancelled: answer 503"),
    ///     other => drop(other),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.statement_timeout = Some(timeout);
        self
    }

    /// Runs `query` within the statement timeout, if any.
    async fn bounded<T>(
        &self,
        call: &'static str,
        query: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.statement_timeout {
            None => query.await,
            Some(timeout) => tokio::time::timeout(timeout, query)
                .await
                .map_err(|_| Error::StatementTimeout { call, timeout })?,
        }
    }

    /// Starts a session for `user_id` and returns its first token.
    ///
    /// # Errors
    /// [`crate::Error::Pool`] when no connection can be had,
    /// [`crate::Error::StatementTimeout`], [`crate::Error::Db`].
    ///
    /// ```
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// let issued = store.issue("user-42").await?;
    /// assert_eq!(issued.generation, 1);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn issue(&self, user_id: &str) -> Result<Issued> {
        self.issue_with_options(user_id, &IssueOptions::default())
            .await
    }

    /// Starts a session for `user_id`, bound and labelled as `options` say.
    ///
    /// # Errors
    /// As [`TokenStore::issue`]; [`crate::Error::Db`] naming the parameter
    /// for a client id, thumbprint or label out of shape (nothing is written).
    ///
    /// ```
    /// use token_janitor::IssueOptions;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// let issued = store
    ///     .issue_with_options("user-42", &IssueOptions::default().device_label("Firefox on Linux"))
    ///     .await?;
    /// # drop(issued);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn issue_with_options(
        &self,
        user_id: &str,
        options: &IssueOptions,
    ) -> Result<Issued> {
        let call = Call::start(&self.pool).await?;
        let answer = self
            .bounded(
                "auth.issue_token",
                issue_on(
                    call.on(),
                    &self.schema,
                    user_id,
                    self.ttl,
                    options,
                    Clock::Server,
                ),
            )
            .await;
        call.end(answer)
    }

    /// Presents a token for rotation, with what the caller proved of the
    /// session's binding: a bound session whose client id or key `options`
    /// do not match reads [`Rotation::Invalid`] and nothing changes.
    ///
    /// # Errors
    /// As [`TokenStore::rotate`]; [`crate::Error::Db`] naming the parameter
    /// for a client id or thumbprint out of shape (nothing changes).
    ///
    /// ```
    /// use token_janitor::RotateOptions;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// # let (presented, thumbprint) = ("rt2_...", "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I");
    /// // The DPoP proof of this request was signed by the key of this thumbprint.
    /// let options = RotateOptions::default().dpop_jkt(thumbprint);
    /// let outcome = store.rotate_with_options(presented, &options).await?;
    /// # drop(outcome);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rotate_with_options(
        &self,
        token: &str,
        options: &RotateOptions,
    ) -> Result<Rotation> {
        let call = Call::start(&self.pool).await?;
        let answer = self
            .bounded(
                "auth.rotate_token",
                rotate_on(
                    call.on(),
                    &self.schema,
                    token,
                    self.ttl,
                    options,
                    Clock::Server,
                ),
            )
            .await;
        call.end(answer)
    }

    /// Presents a token for rotation.
    ///
    /// # Errors
    /// [`crate::Error::MalformedToken`], [`crate::Error::Pool`],
    /// [`crate::Error::StatementTimeout`], [`crate::Error::Db`].
    ///
    /// ```
    /// use token_janitor::Rotation;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// # let presented = "rt2_...";
    /// match store.rotate(presented).await? {
    ///     Rotation::Rotated(next) => println!("hand {} back", next.token.expose()),
    ///     Rotation::ReuseDetected => println!("alert: a stolen token was replayed; sign in again"),
    ///     _ => println!("sign in again"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rotate(&self, token: &str) -> Result<Rotation> {
        self.rotate_with_options(token, &RotateOptions::default())
            .await
    }

    /// Revokes one session; returns how many tokens were revoked.
    ///
    /// # Errors
    /// [`crate::Error::Pool`], [`crate::Error::StatementTimeout`], [`crate::Error::Db`].
    ///
    /// ```
    /// use token_janitor::RevokeReason;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// # let session_id = uuid::Uuid::nil();
    /// let tokens = store.revoke_session(session_id, RevokeReason::Logout).await?;
    /// # drop(tokens);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke_session(&self, session_id: Uuid, reason: RevokeReason) -> Result<i32> {
        let call = Call::start(&self.pool).await?;
        let answer = self
            .bounded(
                "auth.revoke_session",
                revoke_session_on(call.on(), &self.schema, session_id, reason, Clock::Server),
            )
            .await;
        call.end(answer)
    }

    /// Revokes the family of a presented refresh token, as an RFC 7009
    /// revocation endpoint does, when the token is genuine: its row is
    /// stored with its hash, or, once no row is stored (rotated away in
    /// place, or purged), its `rt2_` authenticator verifies and the session
    /// is bound to no client or key. Returns whether it revoked anything. A
    /// forged token, or an `rt1_` token whose row the cleanup has deleted,
    /// revokes nothing: answer the client the same either way. Unlike
    /// [`TokenStore::revoke_session`], which trusts the caller with a
    /// session id, this needs the token itself, so an endpoint anyone can
    /// call cannot sign a user out.
    ///
    /// # Errors
    /// [`crate::Error::MalformedToken`], [`crate::Error::Pool`],
    /// [`crate::Error::StatementTimeout`], [`crate::Error::Db`].
    ///
    /// ```
    /// use token_janitor::RevokeReason;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// # let presented = "rt2_...";
    /// // POST /oauth/revoke (RFC 7009): 200 either way, so that a caller cannot
    /// // probe which tokens are genuine.
    /// let _revoked = store.revoke_token(presented, RevokeReason::Logout).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke_token(&self, token: &str, reason: RevokeReason) -> Result<bool> {
        let call = Call::start(&self.pool).await?;
        let answer = self
            .bounded(
                "auth.revoke_token",
                revoke_token_on(call.on(), &self.schema, token, reason),
            )
            .await;
        call.end(answer)
    }

    /// Revokes every session of a user; returns how many were revoked.
    ///
    /// # Errors
    /// [`crate::Error::Pool`], [`crate::Error::StatementTimeout`], [`crate::Error::Db`].
    ///
    /// ```
    /// use token_janitor::RevokeReason;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// let sessions = store.revoke_user_sessions("user-42", RevokeReason::Admin).await?;
    /// println!("signed user-42 out of {sessions} session(s)");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke_user_sessions(&self, user_id: &str, reason: RevokeReason) -> Result<i32> {
        let call = Call::start(&self.pool).await?;
        let answer = self
            .bounded(
                "auth.revoke_user_sessions",
                revoke_user_sessions_on(
                    call.on(),
                    &self.schema,
                    user_id,
                    reason,
                    None,
                    Clock::Server,
                ),
            )
            .await;
        call.end(answer)
    }

    /// Revokes every session of a user but `keep` ("sign out everywhere
    /// else": pass the caller's own session); returns how many were revoked.
    ///
    /// # Errors
    /// [`crate::Error::Pool`], [`crate::Error::StatementTimeout`], [`crate::Error::Db`].
    ///
    /// ```
    /// use token_janitor::RevokeReason;
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// # let current = uuid::Uuid::nil();
    /// let others = store
    ///     .revoke_user_sessions_except("user-42", current, RevokeReason::Logout)
    ///     .await?;
    /// # drop(others);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn revoke_user_sessions_except(
        &self,
        user_id: &str,
        keep: Uuid,
        reason: RevokeReason,
    ) -> Result<i32> {
        let call = Call::start(&self.pool).await?;
        let answer = self
            .bounded(
                "auth.revoke_user_sessions",
                revoke_user_sessions_on(
                    call.on(),
                    &self.schema,
                    user_id,
                    reason,
                    Some(keep),
                    Clock::Server,
                ),
            )
            .await;
        call.end(answer)
    }

    /// A user's sessions (a device list), newest first, at most 100.
    ///
    /// # Errors
    /// [`crate::Error::Pool`], [`crate::Error::StatementTimeout`], [`crate::Error::Db`].
    ///
    /// ```
    /// # async fn handler(store: token_janitor::TokenStore) -> token_janitor::Result<()> {
    /// let active = store
    ///     .list_sessions("user-42")
    ///     .await?
    ///     .into_iter()
    ///     .filter(|session| session.revoked_at.is_none())
    ///     .count();
    /// println!("{active} signed-in device(s)");
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_sessions(&self, user_id: &str) -> Result<Vec<SessionInfo>> {
        let call = Call::start(&self.pool).await?;
        let answer = self
            .bounded(
                "auth.list_sessions",
                list_sessions_on(call.on(), &self.schema, user_id, DEFAULT_LIST_LIMIT),
            )
            .await;
        call.end(answer)
    }
}

/// The channel every revocation is notified on, with the revoked session's
/// id as its payload: `LISTEN token_janitor_revocations`.
const REVOCATION_CHANNEL: &str = "token_janitor_revocations";

/// Revocation notices: the id of every session revoked from now on (logout,
/// `revoke_user_sessions`, a detected reuse), each once its revoking
/// transaction commits, on a dedicated connection that `LISTEN`s on
/// `token_janitor_revocations`. A service that holds access tokens or websockets
/// of a session drops them on its notice. Expiry sends nothing: it is known
/// in advance.
///
/// Read it as a [`futures_core::Stream`] or with [`RevocationNotices::next`].
/// It ends after an error (the connection closed: a restart, a network
/// failure): notices sent meanwhile are lost, so listen again and treat
/// what you hold as possibly revoked until then. Keep reading: PostgreSQL
/// queues notices for a listener that does not read them, and once its
/// queue (8 GB by default) is full, revocations fail.
///
/// ```no_run
/// use std::collections::HashSet;
/// use token_janitor::{DatabaseUrl, RevocationNotices};
/// # use uuid::Uuid;
///
/// # async fn watch(signed_in: &mut HashSet<Uuid>) -> token_janitor::Result<()> {
/// let url = DatabaseUrl::parse("postgres://app@localhost/app")?;
/// let mut notices = RevocationNotices::listen(&url).await?;
/// while let Some(session_id) = notices.next().await {
///     // Close the websockets (or drop the cached access) of that session.
///     signed_in.remove(&session_id?);
/// }
/// # Ok(())
/// # }
/// ```
pub struct RevocationNotices {
    /// Kept for the connection: dropping it would close it.
    _client: tokio_postgres::Client,
    connection: crate::db::Connection,
    /// Notices that arrived while `LISTEN` was being sent.
    early: std::collections::VecDeque<tokio_postgres::Notification>,
    ended: bool,
}

impl std::fmt::Debug for RevocationNotices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RevocationNotices")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl RevocationNotices {
    /// Opens a connection to `url` and listens for revocations; notices of
    /// transactions that commit after this returns are all delivered.
    ///
    /// # Errors
    /// As [`crate::DatabaseUrl::connect`]; [`crate::Error::Db`] when `LISTEN`
    /// fails (e.g. on a standby, which cannot listen).
    ///
    /// ```
    /// use token_janitor::{DatabaseUrl, RevocationNotices};
    /// # async fn start() -> token_janitor::Result<()> {
    /// let url = DatabaseUrl::parse("postgres://app@localhost/app")?;
    /// let notices = RevocationNotices::listen(&url).await?;
    /// # drop(notices);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn listen(url: &crate::DatabaseUrl) -> Result<Self> {
        use tokio_postgres::AsyncMessage;
        let (client, mut connection) = url.open().await?;
        let mut early = std::collections::VecDeque::new();
        {
            let statement = format!("LISTEN {REVOCATION_CHANNEL}");
            let listen = client.batch_execute(&statement);
            tokio::pin!(listen);
            loop {
                tokio::select! {
                    done = &mut listen => {
                        done.map_err(db("listening for revocation notices"))?;
                        break;
                    }
                    message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                        Some(Ok(AsyncMessage::Notification(notice))) => early.push_back(notice),
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(db("listening for revocation notices")(err)),
                        None => {
                            return Err(Error::UnexpectedResponse(
                                "the connection closed before LISTEN completed".to_string(),
                            ));
                        }
                    },
                }
            }
        }
        Ok(Self {
            _client: client,
            connection,
            early,
            ended: false,
        })
    }

    /// The next revoked session's id; `None` once the stream has ended.
    ///
    /// # Errors
    /// [`crate::Error::Db`] when the connection fails (the stream then
    /// ends); [`crate::Error::UnexpectedResponse`] for a payload that is not
    /// a session id.
    ///
    /// ```
    /// # async fn drain(mut notices: token_janitor::RevocationNotices) -> token_janitor::Result<()> {
    /// while let Some(revoked) = notices.next().await {
    ///     println!("session {} was revoked", revoked?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next(&mut self) -> Option<Result<Uuid>> {
        std::future::poll_fn(|cx| {
            futures_core::Stream::poll_next(std::pin::Pin::new(&mut *self), cx)
        })
        .await
    }
}

fn revoked_session(notice: &tokio_postgres::Notification) -> Result<Uuid> {
    Uuid::parse_str(notice.payload()).map_err(|_| {
        Error::UnexpectedResponse(format!(
            "a notice on {REVOCATION_CHANNEL} that is not a session id: {:?}",
            notice.payload()
        ))
    })
}

impl futures_core::Stream for RevocationNotices {
    type Item = Result<Uuid>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        use tokio_postgres::AsyncMessage;
        let this = self.get_mut();
        if let Some(notice) = this.early.pop_front() {
            return Poll::Ready(Some(revoked_session(&notice)));
        }
        while !this.ended {
            match this.connection.poll_message(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(AsyncMessage::Notification(notice)))) => {
                    return Poll::Ready(Some(revoked_session(&notice)));
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(err))) => {
                    this.ended = true;
                    return Poll::Ready(Some(Err(db("receiving revocation notices")(err))));
                }
                Poll::Ready(None) => this.ended = true,
            }
        }
        Poll::Ready(None)
    }
}
