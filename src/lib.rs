//! token-janitor: a refresh-token store for PostgreSQL whose cleanup lives
//! inside the database.
//!
//! - [`migrate::migrate`] installs the `auth` schema, the SQL API, the purge's
//!   indexes and the pg_cron job;
//! - [`store::TokenStore`] issues, rotates and revokes tokens through it;
//! - [`verify::verify`] proves the cleanup works on a live database, and
//!   [`status::status`] shows its state.

#![warn(missing_docs)]

#[cfg(feature = "cli")]
pub mod bench;
pub mod db;
pub mod error;
pub mod locks;
pub mod migrate;
pub mod owner;
pub mod schedule;
pub mod status;
pub mod store;
pub mod token;
pub mod verify;

pub use db::DatabaseUrl;
pub use error::{Error, Result};
pub use migrate::{MigrateOptions, MigrateReport, migrate};
pub use schedule::ScheduleChoice;
pub use store::{Issued, RevokeReason, Rotation, SessionInfo, TokenStore};
pub use token::RefreshToken;
