//! The operator part: install the schema and its job ([`migrate()`]), prove
//! the cleanup works ([`verify()`]), show its state ([`status()`]). What
//! the `token-janitor` command line runs, for an application that deploys
//! itself or a monitor written in Rust. These calls have their own
//! [`Error`], which wraps the runtime [`crate::Error`] in
//! [`Error::Runtime`].
//!
//! ```no_run
//! use token_janitor::DatabaseUrl;
//! use token_janitor::operator::{self, MigrateOptions, VerifyOptions};
//!
//! # async fn deploy() -> Result<(), operator::Error> {
//! let url = DatabaseUrl::parse("postgres://deployer@localhost/app")?;
//! let mut client = url.connect().await?;
//! let report = operator::migrate(&mut client, &MigrateOptions::default()).await?;
//! println!("applied {:?}, owner {}", report.applied, report.owner);
//!
//! let checks = operator::verify(&url, &VerifyOptions::default()).await;
//! assert!(checks.ok, "{checks}");
//! # Ok(())
//! # }
//! ```

pub use crate::migrate::{MigrateOptions, MigrateReport, migrate};
pub use crate::schedule::{CronDatabase, ScheduleChoice};
pub use crate::status::{Count, Job, Relation, Run, RunStatus, SecurityEvents, Status, status};
pub use crate::verify::{Check, Outcome, Report, VerifyOptions, verify};

/// What can go wrong in [`migrate()`], [`verify()`]'s and [`status()`]'s
/// callers: deploying the schema and its pg_cron job. Each message names what
/// failed and what to do about it; the options it names (`MigrateOptions::…`,
/// `ScheduleChoice::Off`) are the command line's flags there.
///
/// ```
/// use token_janitor::operator::{Error, MigrateOptions, ScheduleChoice};
///
/// /// Deploying without pg_cron is a choice, not a failure, on a server
/// /// that has none: the caller then runs the cleanup itself.
/// fn schedule_instead(err: &Error) -> Option<MigrateOptions> {
///     matches!(err, Error::PgCronNotPreloaded { .. } | Error::PgCronNotInstalled { .. })
///         .then(|| MigrateOptions { schedule: ScheduleChoice::Off, ..MigrateOptions::default() })
/// }
/// # assert!(schedule_instead(&Error::LockTimeout { waited_s: 1, key: 1 }).is_none());
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A runtime error: the URL, a connection, a statement, a schema name.
    #[error(transparent)]
    Runtime(#[from] crate::Error),

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
        source: crate::Error,
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
        /// The job name: `token-janitor:<database>` (and `:<schema>` for a
        /// schema other than auth).
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
        /// The command it should run (`CALL <schema>.run_token_cleanup()`).
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
}

/// Result with the operator's [`Error`].
///
/// ```
/// use token_janitor::operator::{self, MigrateOptions};
///
/// async fn deploy(url: &str) -> operator::Result<Vec<String>> {
///     let mut client = token_janitor::DatabaseUrl::parse(url)?.connect().await?;
///     Ok(operator::migrate(&mut client, &MigrateOptions::default()).await?.applied)
/// }
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
