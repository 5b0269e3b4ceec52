//! The library's one error type.

/// Everything that can go wrong in token-janitor. Each message names what
/// failed and what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database URL could not be parsed.
    #[error(
        "invalid database URL ({reason}): expected postgres://user[:password]@host[:port]/database"
    )]
    InvalidUrl {
        /// What the parser said.
        reason: String,
    },

    /// No connection could be opened to the server.
    #[error(
        "cannot connect to PostgreSQL at {target}: {message}; check that the server is running \
         there and that the database URL is right"
    )]
    Connect {
        /// host:port/database, never the password.
        target: String,
        /// The driver's description of the failure.
        message: String,
    },

    /// The server did not complete a connection within the connect timeout.
    #[error(
        "no answer from PostgreSQL at {target} within connect_timeout ({timeout:?}): check that \
         the host and port are a PostgreSQL server's and that it is not overloaded, or raise \
         connect_timeout (seconds) in the URL"
    )]
    ConnectTimeout {
        /// host:port/database, never the password.
        target: String,
        /// The URL's connect_timeout, or the default 10 s.
        timeout: std::time::Duration,
    },

    /// A [`crate::TokenStore`] call took longer than its statement timeout;
    /// its query was cancelled on the server.
    #[error(
        "{call} did not finish within the statement timeout ({timeout:?}) and was cancelled: \
         look for locks or load on the server, or raise TokenStore::with_statement_timeout"
    )]
    StatementTimeout {
        /// The SQL function called.
        call: &'static str,
        /// The store's statement timeout.
        timeout: std::time::Duration,
    },

    /// The server's certificate does not chain to a trusted CA.
    #[error(
        "the server certificate at {target} is not signed by a trusted CA ({roots} does not hold \
         the CA that signed it): point sslrootcert at your provider's CA bundle, or at the CA \
         that signed the server's certificate"
    )]
    UntrustedCertificate {
        /// host:port/database, never the password.
        target: String,
        /// Where the trusted CAs came from.
        roots: String,
    },

    /// The server's certificate is valid but not for the host connected to.
    #[error(
        "host name mismatch: the server certificate at {target} is not valid for host '{host}': \
         connect with a host name the certificate names, or use sslmode=verify-ca to check the \
         CA only"
    )]
    HostNameMismatch {
        /// host:port/database, never the password.
        target: String,
        /// The host name in the URL.
        host: String,
    },

    /// TLS was required but the server does not offer it.
    #[error(
        "the server at {target} does not support TLS, which sslmode={mode} requires: enable ssl \
         on the server, or use sslmode=prefer or disable for a server you reach over a trusted \
         network"
    )]
    ServerWithoutTls {
        /// host:port/database, never the password.
        target: String,
        /// The sslmode asked for.
        mode: &'static str,
    },

    /// The server accepts only TLS connections and sslmode=disable was asked.
    #[error(
        "the server at {target} accepts only TLS connections and the URL has sslmode=disable \
         ({message}): use sslmode=verify-full with sslrootcert=<your provider's CA file>"
    )]
    TlsRequired {
        /// host:port/database, never the password.
        target: String,
        /// The server's message.
        message: String,
    },

    /// The CA file named by sslrootcert cannot be used.
    #[error(
        "cannot use sslrootcert '{path}': {reason}; download your provider's CA bundle and set \
         sslrootcert=<path> in the URL (verify-ca and verify-full need one)"
    )]
    SslRootCert {
        /// The file (libpq's default ~/.postgresql/root.crt when none was given).
        path: String,
        /// Why it cannot be used.
        reason: String,
    },

    /// pg_cron is not loaded by the server.
    #[error(
        "pg_cron is not loaded by the server ({evidence}): add pg_cron to shared_preload_libraries \
         (on a managed service, in its parameters or flags: see docs/deploying.md, 'Deploying on \
         managed PostgreSQL') and restart PostgreSQL, or migrate without a schedule \
         (ScheduleChoice::Off) and call the cleanup yourself"
    )]
    PgCronNotPreloaded {
        /// What showed it: the server's shared_preload_libraries, or that no
        /// pg_cron launcher runs.
        evidence: String,
    },

    /// pg_cron lives in another database and no way to reach it was given.
    #[error(
        "pg_cron can only be created in database '{configured}' (cron.database_name), but this is \
         '{current}': let migrate connect there (MigrateOptions::cron_database), or set \
         cron.database_name = '{current}' and restart PostgreSQL, or migrate without a schedule \
         (ScheduleChoice::Off)"
    )]
    PgCronWrongDatabase {
        /// cron.database_name.
        configured: String,
        /// The database we are connected to.
        current: String,
    },

    /// pg_cron's database could not be reached.
    #[error(
        "cannot reach pg_cron's database: {source}; give migrate a URL of a role that may log in \
         there (MigrateOptions::cron_database), or migrate without a schedule (ScheduleChoice::Off)"
    )]
    CronDatabase {
        /// Why the connection failed.
        source: Box<Error>,
    },

    /// The pg_cron extension is missing and this role may not create it.
    #[error(
        "pg_cron is not installed in database '{database}' and role '{role}' may not create it \
         (CREATE EXTENSION pg_cron needs a superuser or the provider's admin role): have it \
         created there once (RDS/Aurora: as rds_superuser; Cloud SQL: as cloudsqlsuperuser \
         after setting the flag cloudsql.enable_pg_cron; Azure Flexible Server: as the admin \
         user after allow-listing pg_cron in azure.extensions; Supabase: Integrations > \
         Cron; your own server: as a superuser), or migrate without a schedule (ScheduleChoice::Off)"
    )]
    PgCronNotSuperuser {
        /// The connected role.
        role: String,
        /// pg_cron's database (cron.database_name).
        database: String,
    },

    /// The pg_cron extension is missing where it must be installed (what
    /// verify finds; migrate creates it, or says why it may not).
    #[error(
        "pg_cron is not installed in database '{database}': run token-janitor migrate as a \
         superuser (it creates the extension), or have it created there once (see \
         docs/deploying.md, 'Deploying on managed PostgreSQL'), or migrate without a schedule \
         (ScheduleChoice::Off)"
    )]
    PgCronNotInstalled {
        /// pg_cron's database (cron.database_name).
        database: String,
    },

    /// This role may not schedule a job that runs in another database.
    #[error(
        "role '{role}' may not schedule jobs with pg_cron in database '{database}' ({missing}): \
         as the provider's admin role (or a superuser) run there: GRANT USAGE ON SCHEMA cron TO \
         {role}; GRANT EXECUTE ON FUNCTION cron.schedule_in_database(text, text, text, text, \
         text, boolean), cron.alter_job(bigint, text, text, text, text, boolean) TO {role}; or \
         run migrate as that admin role, or migrate without a schedule (ScheduleChoice::Off)"
    )]
    PgCronNoPermission {
        /// The connected role.
        role: String,
        /// pg_cron's database.
        database: String,
        /// Which privilege is missing.
        missing: String,
    },

    /// pg_cron is too old to run a job in another database.
    #[error(
        "pg_cron {version} in database '{database}' cannot run jobs in another database \
         (cron.schedule_in_database came with 1.4): ALTER EXTENSION pg_cron UPDATE there, \
         or set cron.database_name to the application's database, or migrate without a schedule \
         (ScheduleChoice::Off)"
    )]
    PgCronTooOld {
        /// The installed extension version.
        version: String,
        /// pg_cron's database.
        database: String,
    },

    /// This database's job name is taken by a job that runs in another
    /// database (made by hand, or left by a database since renamed).
    #[error(
        "pg_cron job '{job}' (id {jobid}) runs in database '{other}', but its name is database \
         '{database}''s: remove it with SELECT cron.unschedule({jobid}) if '{other}' does not \
         need it, or move it with SELECT cron.alter_job({jobid}, database => '{database}'), then \
         migrate again"
    )]
    PgCronJobElsewhere {
        /// The job name, [`crate::schedule::job_name`] of this database.
        job: String,
        /// The existing job's id.
        jobid: i64,
        /// The database the existing job runs in.
        other: String,
        /// The application's database.
        database: String,
    },

    /// The job migrate scheduled does not read back as it was scheduled.
    #[error(
        "pg_cron job '{job}' (id {jobid}) was scheduled to run `{command}` \
         in database '{database}', but {found}: this database has no cleanup; look at the job \
         in pg_cron's database (SELECT * FROM cron.job WHERE jobid = {jobid}), remove it with \
         cron.unschedule({jobid}) and migrate again"
    )]
    JobNotAsScheduled {
        /// The job name.
        job: String,
        /// The job's id.
        jobid: i64,
        /// The command it should run ([`crate::Schema::job_command`]).
        command: String,
        /// The application's database, where it should run.
        database: String,
        /// What was read back.
        found: String,
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

    /// A schema name token-janitor will not install into.
    #[error(
        "invalid schema name '{name}': {reason}; a schema (MigrateOptions::schema) takes {rule}",
        rule = crate::schema::SCHEMA_NAME_RULE
    )]
    InvalidSchema {
        /// The name as given.
        name: String,
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

    /// A statement failed. The driver's error is its `source()`;
    /// [`Error::sqlstate`] gives the server's SQLSTATE.
    #[error("{context}: {message}")]
    Db {
        /// What we were doing.
        context: String,
        /// The server's message, with detail and hint.
        message: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// No pooled connection could be had. The pool's error is its `source()`.
    #[error(
        "cannot get a database connection from the pool: {message}; check that the server is \
         running and that the URL the pool was built from is right"
    )]
    Pool {
        /// What went wrong, with the server's message or the TLS cause.
        message: String,
        /// The pool's error.
        #[source]
        source: deadpool_postgres::PoolError,
    },

    /// `token-janitor bench` cannot run as asked (a soak too short for its
    /// policy, a failed task) or found its own scratch data not as it made it.
    #[error("bench: {0}")]
    Bench(String),

    /// A refresh token string that is not one of ours.
    #[error("malformed refresh token: {0}")]
    MalformedToken(&'static str),

    /// The database answered something this library does not know, e.g. a
    /// rotate outcome of a newer schema.
    #[error(
        "unexpected answer from the database: {0}; the schema and this library may be of \
         different releases: run token-janitor migrate with this release"
    )]
    UnexpectedResponse(String),
}

impl From<deadpool_postgres::PoolError> for Error {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::{PoolError, TimeoutType};
        let message = match &err {
            PoolError::Backend(backend) => describe(backend),
            PoolError::Timeout(step) => format!(
                "the pool's {} timeout (DatabaseUrl::pool sets the URL's connect_timeout, 10 s \
                 when it has none) expired while {}",
                match step {
                    TimeoutType::Wait => "wait",
                    TimeoutType::Create => "create",
                    TimeoutType::Recycle => "recycle",
                },
                match step {
                    TimeoutType::Wait => "waiting for a free connection (raise the pool's size)",
                    TimeoutType::Create => "opening a connection",
                    TimeoutType::Recycle => "checking an idle connection",
                }
            ),
            other => other.to_string(),
        };
        Error::Pool {
            message,
            source: err,
        }
    }
}

impl Error {
    /// The SQLSTATE of the server error behind this one, if a server error
    /// is behind it (e.g. `22023` for an argument `auth` refused).
    pub fn sqlstate(&self) -> Option<&tokio_postgres::error::SqlState> {
        match self {
            Error::Db { source, .. } => source.code(),
            Error::Pool {
                source: deadpool_postgres::PoolError::Backend(backend),
                ..
            } => backend.code(),
            _ => None,
        }
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The certificate error rustls raised during the handshake, if that is why
/// a connection failed. The driver wraps it in an `io::Error`, whose
/// `source()` skips the wrapped error, hence `get_ref`.
pub(crate) fn certificate_error(err: &tokio_postgres::Error) -> Option<rustls::CertificateError> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(err);
    while let Some(cause) = next {
        let inner = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static))
            .unwrap_or(cause);
        if let Some(rustls::Error::InvalidCertificate(cert)) = inner.downcast_ref::<rustls::Error>()
        {
            return Some(cert.clone());
        }
        next = cause.source();
    }
    None
}

/// Describes a driver error with the server's message, detail and hint, which
/// the driver's own `Display` leaves out, and a refused server certificate in
/// words (for errors that reach us without the URL, such as a pool's).
pub fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(cause) = certificate_error(err) {
        use rustls::CertificateError as Cert;
        let what = match cause {
            Cert::UnknownIssuer | Cert::BadSignature => {
                "it is not signed by a trusted CA (check sslrootcert)"
            }
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => {
                "host name mismatch: it does not name the host in the URL"
            }
            Cert::Expired | Cert::ExpiredContext { .. } => "it has expired",
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => "it is not valid yet",
            _ => "it failed verification",
        };
        return format!("the server's TLS certificate was refused: {what} ({cause:?})");
    }
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
        source: err,
    }
}
