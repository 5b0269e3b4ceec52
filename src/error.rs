//! The library's one error type.

/// Everything that can go wrong in token-janitor. Each message names what
/// failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL could not be parsed.
    #[error(
        "invalid database URL ({reason}): expected postgres://user[:password]@host[:port]/database, \
         from --database-url or DATABASE_URL"
    )]
    InvalidUrl {
        /// What the parser said.
        reason: String,
    },

    /// No connection could be opened to the server.
    #[error(
        "cannot connect to PostgreSQL at {target}: {message}; check that the server is running \
         there and that --database-url / DATABASE_URL is right"
    )]
    Connect {
        /// host:port/database, never the password.
        target: String,
        /// The driver's description of the failure.
        message: String,
    },

    /// pg_cron is not loaded by the server.
    #[error(
        "pg_cron is not in shared_preload_libraries (it is '{current}'): add pg_cron to \
         shared_preload_libraries in postgresql.conf and restart PostgreSQL, or pass --no-schedule \
         and call the cleanup yourself"
    )]
    PgCronNotPreloaded {
        /// The server's current shared_preload_libraries.
        current: String,
    },

    /// pg_cron is loaded, but for another database.
    #[error(
        "pg_cron can only be created in database '{configured}' (cron.database_name), but this is \
         '{current}': run migrate against '{configured}', or set cron.database_name = '{current}' \
         and restart PostgreSQL, or pass --no-schedule"
    )]
    PgCronWrongDatabase {
        /// cron.database_name.
        configured: String,
        /// The database we are connected to.
        current: String,
    },

    /// The pg_cron extension is missing and this role may not create it.
    #[error(
        "pg_cron is not installed in this database and role '{role}' is not a superuser, which \
         CREATE EXTENSION pg_cron requires: run CREATE EXTENSION pg_cron as a superuser once, \
         or pass --no-schedule"
    )]
    PgCronNotSuperuser {
        /// The connected role.
        role: String,
    },

    /// The schedule is not one pg_cron 1.4 accepts.
    #[error(
        "invalid schedule '{schedule}': {reason}; pg_cron 1.4 takes a 5-field cron expression in \
         UTC with minute granularity, such as '*/5 * * * *'"
    )]
    InvalidSchedule {
        /// The schedule as given.
        schedule: String,
        /// Why it was refused.
        reason: String,
    },

    /// Another migrate held the deploy lock for longer than we would wait.
    #[error(
        "another token-janitor migrate has held the deploy lock for over {waited_s}s: wait for it \
         to finish, or find it in pg_stat_activity (advisory lock {key})"
    )]
    LockTimeout {
        /// Seconds waited.
        waited_s: u64,
        /// The advisory lock key.
        key: i64,
    },

    /// migrate found objects in its way (not its own, or not a suitable
    /// owner) and changed nothing. Each entry names one and what to do.
    #[error("migrate changed nothing: {}", .0.join("; "))]
    Conflict(Vec<String>),

    /// A versioned migration failed or differs from the one applied before.
    #[error("migration failed: {0}")]
    Migration(#[from] refinery::Error),

    /// A statement failed.
    #[error("{context}: {message}")]
    Db {
        /// What we were doing.
        context: String,
        /// The server's message, with detail and hint.
        message: String,
    },

    /// No pooled connection could be had.
    #[error(
        "cannot get a database connection from the pool: {0}; check that the server is running \
         and that the URL the pool was built from is right"
    )]
    Pool(String),

    /// A refresh token string that is not one of ours.
    #[error("malformed refresh token: {0}")]
    MalformedToken(&'static str),
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        match err {
            deadpool_postgres::PoolError::Backend(err) => Error::Pool(describe(&err)),
            other => Error::Pool(other.to_string()),
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Describes a driver error with the server's message, detail and hint, which
/// the driver's own `Display` leaves out.
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut text = format!("{} ({})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Wraps a driver error with what we were doing: `.map_err(db("applying sql/x"))`.
pub fn db(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
    let context = context.into();
    move |err| Error::Db {
        context,
        message: describe(&err),
    }
}
