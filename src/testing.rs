//! Not API: what this crate's own tests and demo reach inside it (the
//! `testing` feature, which only its dev-dependency on itself turns on).
//! No compatibility promise; an application never enables it.

pub use crate::history::LEGACY_TABLE;
pub use crate::migrate::{EmbeddedMigration, embedded_migrations, index_statements};
pub use crate::schedule::job_name;
pub use crate::schema::{DEFAULT_SCHEMA, SCHEMA_NAME_RULE};

/// The same calls with a driven clock, for tests, demos and simulations:
/// each runs the clock-driven form of its SQL function (`p_now`), which only
/// the owner role may execute. An application never uses these.
pub mod simulated {
    use std::time::{Duration, SystemTime};

    use tokio_postgres::GenericClient;
    use uuid::Uuid;

    use crate::store::{
        Clock, IssueOptions, Issued, On, RevokeReason, RotateOptions, Rotation, issue_on,
        revoke_session_on, revoke_user_sessions_on, rotate_on,
    };
    use crate::{Result, Schema};

    /// [`crate::store::issue_with`] at `now`.
    ///
    /// # Errors
    /// As [`crate::store::issue_with`]; permission denied for a role that is not the owner.
    pub async fn issue_at<C: GenericClient>(
        client: &C,
        user_id: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Issued> {
        issue_on(
            On::client(client),
            &Schema::default(),
            user_id,
            ttl,
            &IssueOptions::default(),
            Clock::At(now),
        )
        .await
    }

    /// [`crate::store::rotate_with`] at `now`.
    ///
    /// # Errors
    /// As [`crate::store::rotate_with`]; permission denied for a role that is not the owner.
    pub async fn rotate_at<C: GenericClient>(
        client: &C,
        token: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<Rotation> {
        rotate_on(
            On::client(client),
            &Schema::default(),
            token,
            ttl,
            &RotateOptions::default(),
            Clock::At(now),
        )
        .await
    }

    /// [`crate::store::revoke_session_with`] at `now`.
    ///
    /// # Errors
    /// As [`crate::store::revoke_session_with`]; permission denied for a role that is not the owner.
    pub async fn revoke_session_at<C: GenericClient>(
        client: &C,
        session_id: Uuid,
        reason: RevokeReason,
        now: SystemTime,
    ) -> Result<i32> {
        revoke_session_on(
            On::client(client),
            &Schema::default(),
            session_id,
            reason,
            Clock::At(now),
        )
        .await
    }

    /// [`crate::store::revoke_user_sessions_with`] at `now`.
    ///
    /// # Errors
    /// As [`crate::store::revoke_user_sessions_with`]; permission denied for a role that is not the owner.
    pub async fn revoke_user_sessions_at<C: GenericClient>(
        client: &C,
        user_id: &str,
        reason: RevokeReason,
        now: SystemTime,
    ) -> Result<i32> {
        revoke_user_sessions_on(
            On::client(client),
            &Schema::default(),
            user_id,
            reason,
            None,
            Clock::At(now),
        )
        .await
    }

    /// [`crate::store::revoke_user_sessions_except_with`] at `now`.
    ///
    /// # Errors
    /// As [`crate::store::revoke_user_sessions_except_with`]; permission denied for a role that is not the owner.
    pub async fn revoke_user_sessions_except_at<C: GenericClient>(
        client: &C,
        user_id: &str,
        keep: Uuid,
        reason: RevokeReason,
        now: SystemTime,
    ) -> Result<i32> {
        revoke_user_sessions_on(
            On::client(client),
            &Schema::default(),
            user_id,
            reason,
            Some(keep),
            Clock::At(now),
        )
        .await
    }
}
