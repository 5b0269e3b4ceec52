//! token-janitor: a refresh-token store for PostgreSQL whose cleanup lives
//! inside the database.
//!
//! - [`migrate::migrate`] installs the `auth` schema (or another, [`Schema`]), the SQL API, the purge's
//!   indexes and the pg_cron job;
//! - [`store::TokenStore`] issues, rotates and revokes tokens through it;
//! - [`verify::verify`] proves the cleanup works on a live database, and
//!   [`status::status`] shows its state.
//!
//! # Quick start
//!
//! Migrate at start-up (or run `token-janitor migrate` at deploy time), then
//! issue a token at sign-in, rotate it at each refresh, revoke it at
//! sign-out:
//!
//! ```no_run
//! use token_janitor::{DatabaseUrl, MigrateOptions, RevokeReason, Rotation, TokenStore, migrate};
//!
//! # async fn app() -> Result<(), token_janitor::Error> {
//! let url = DatabaseUrl::parse("postgres://deployer@localhost/app")?;
//! let mut client = url.connect().await?;
//! migrate(&mut client, &MigrateOptions::default()).await?;
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
pub mod bench;
pub mod db;
pub mod error;
pub mod history;
pub mod migrate;
pub mod owner;
pub mod schedule;
pub mod schema;
pub mod status;
pub mod store;
pub mod token;
pub mod verify;

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
/// with: its clients and transactions are what the `*_with` functions of
/// [`store`] take.
pub use tokio_postgres;

pub use db::DatabaseUrl;
pub use error::{Error, Result};
pub use migrate::{MigrateOptions, MigrateReport, migrate};
pub use schedule::ScheduleChoice;
pub use schema::Schema;
pub use store::{
    IssueOptions, Issued, RevocationNotices, RevokeReason, RotateOptions, Rotation, SessionInfo,
    TokenStore,
};
pub use token::RefreshToken;
