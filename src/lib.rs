//! token-janitor: a refresh-token store for PostgreSQL whose cleanup lives
//! inside the database.
//!
//! The crate has two parts:
//! - the runtime, what an application's handlers use: [`TokenStore`] issues,
//!   rotates and revokes [`RefreshToken`]s through the SQL API on a pool
//!   ([`DatabaseUrl::pool`]); the [`store`] functions do the same on a
//!   connection or transaction of the application's; [`Error`] says what
//!   failed;
//! - the [`operator`] part, what a deploy or a monitor runs:
//!   [`operator::migrate()`] installs the `auth` schema (or another,
//!   [`Schema`]), the SQL API, the purge's indexes and the pg_cron job;
//!   [`operator::verify()`] proves the cleanup works on a live database and
//!   [`operator::status()`] shows its state. The `token-janitor` command
//!   line runs these.
//!
//! # Quick start
//!
//! Migrate at start-up (or run `token-janitor migrate` at deploy time), then
//! issue a token at sign-in, rotate it at each refresh, revoke it at
//! sign-out:
//!
//! ```no_run
//! use token_janitor::operator::{self, MigrateOptions};
//! use token_janitor::{DatabaseUrl, RevokeReason, Rotation, TokenStore};
//!
//! # async fn app() -> Result<(), Box<dyn std::error::Error>> {
//! let url = DatabaseUrl::parse("postgres://deployer@localhost/app")?;
//! let mut client = url.connect().await?;
//! operator::migrate(&mut client, &MigrateOptions::default()).await?;
//!
//! let store = TokenStore::new(DatabaseUrl::parse("postgres://app@localhost/app")?.pool(8));
//! let issued = store.issue("user-42").await?; // sign-in: hand issued.token to the client
//! match store.rotate(issued.token.expose()).await? {
//!     Rotation::Rotated(next) => println!("new token for {}", next.user_id),
//!     _ => println!("sign in again"), // replayed, expired, revoked or forged
//! }
//! store.revoke_token(issued.token.expose(), RevokeReason::Logout).await?; // sign-out
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

#[cfg(feature = "cli")]
mod bench;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
mod db;
mod error;
mod history;
mod migrate;
pub mod operator;
mod owner;
mod schedule;
mod schema;
mod status;
pub mod store;
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;
mod token;
mod verify;

/// The pool crate [`TokenStore::new`] takes, at the version this crate
/// builds with, so an application does not pin a second copy to match.
///
/// ```no_run
/// use token_janitor::deadpool_postgres::{Config, Runtime};
/// use token_janitor::tokio_postgres::NoTls;
/// use token_janitor::{Rotation, TokenStore};
///
/// # async fn refresh(presented: &str) -> Result<(), Box<dyn std::error::Error>> {
/// let mut config = Config::new();
/// config.url = Some("postgres://app@localhost/app".to_string());
/// let pool = config.create_pool(Some(Runtime::Tokio1), NoTls)?;
/// let store = TokenStore::new(pool);
/// if let Rotation::Rotated(next) = store.rotate(presented).await? {
///     println!("refreshed a token of {}", next.user_id);
/// }
/// # Ok(())
/// # }
/// ```
pub use deadpool_postgres;
/// The driver behind [`deadpool_postgres`], at the version this crate builds
/// with: its clients and transactions are what the functions of [`store`]
/// take.
///
/// ```no_run
/// use token_janitor::tokio_postgres::NoTls;
///
/// # async fn connect() -> Result<(), token_janitor::tokio_postgres::Error> {
/// let (client, connection) =
///     token_janitor::tokio_postgres::connect("postgres://app@localhost/app", NoTls).await?;
/// tokio::spawn(connection);
/// let sessions = token_janitor::store::list_sessions_with(&client, "user-42", 10).await;
/// # drop(sessions);
/// # Ok(())
/// # }
/// ```
pub use tokio_postgres;

pub use db::DatabaseUrl;
pub use error::{ConnectFailure, Error, Result};
pub use schema::Schema;
pub use store::{
    IssueOptions, Issued, RevocationNotices, RevokeReason, RotateOptions, Rotation, SessionInfo,
    TokenStore,
};
pub use token::RefreshToken;
