//! pg_cron: finding the database it lives in (cron.database_name), diagnosing
//! why it cannot be used, creating the extension, upserting the cleanup job
//! and reading it back.
//!
//! pg_cron keeps its jobs in one database per server. When that is not the
//! application's database (managed services keep it in `postgres`), the job is
//! scheduled from there with `cron.schedule_in_database` and runs in the
//! application's database.

use tokio_postgres::Client;

use crate::db::DatabaseUrl;
use crate::error::db;
use crate::operator::{Error, Result};
use crate::schema::Schema;

/// The default schedule: every five minutes, UTC.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";
/// How job names start; the database and schema follow.
const JOB_NAME_PREFIX: &str = "token-janitor cleanup: ";
/// pg_cron's job names are of type `name`: 63 bytes.
const MAX_JOB_NAME: usize = 63;

/// The cleanup job's name for `database` and `schema`: `token-janitor
/// cleanup: DATABASE.SCHEMA`, so that every database on a server has its own
/// job on a shared pg_cron. A name over pg_cron's 63 bytes is cut and ends
/// in `~` and 8 hex digits of the SHA-256 of `DATABASE.SCHEMA`, so that it
/// stays one per database and schema. Checks find the job by database and
/// command, not by this name.
pub fn job_name(database: &str, schema: &str) -> String {
    let full = format!("{JOB_NAME_PREFIX}{database}.{schema}");
    if full.len() <= MAX_JOB_NAME {
        return full;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{database}.{schema}"));
    let suffix: String = std::iter::once("~".to_string())
        .chain(digest[..4].iter().map(|b| format!("{b:02x}")))
        .collect();
    let mut cut = MAX_JOB_NAME - suffix.len();
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}{suffix}", &full[..cut])
}

/// Which schedule migrate gives the cleanup job.
///
/// ```
/// use token_janitor::operator::{MigrateOptions, ScheduleChoice};
///
/// // A server without pg_cron: the team's own scheduler runs the cleanup.
/// let options = MigrateOptions { schedule: ScheduleChoice::Off, ..MigrateOptions::default() };
/// # drop(options);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ScheduleChoice {
    /// Keep the schedule this database's job has (an operator may have set
    /// it); a database without a job gets `*/5 * * * *`. What an
    /// application's start-up migrate should use: it changes nothing an
    /// operator chose.
    #[default]
    KeepOrDefault,
    /// This schedule, replacing the job's (`--schedule`).
    Set(String),
    /// Nothing pg_cron-related (`--no-schedule`): the cleanup is called by
    /// another scheduler.
    Off,
}

/// The database the pg_cron launcher serves, from pg_stat_activity. Other
/// roles' rows show no backend_type to a plain role, but they do show the
/// application_name the launcher sets.
pub(crate) const LAUNCHER_DATABASE: &str = "(SELECT datname::text FROM pg_catalog.pg_stat_activity
     WHERE backend_type = 'pg_cron launcher'
        OR (backend_type IS NULL AND application_name = 'pg_cron scheduler')
     LIMIT 1)";

/// Checks a schedule before anything is changed. pg_cron validates it again
/// when the job is upserted; this catches the forms pg_cron 1.4 lacks early.
///
/// # Errors
/// [`Error::InvalidSchedule`] saying what is wrong.
pub fn check_schedule(schedule: &str) -> Result<()> {
    let invalid = |reason: &str| Error::InvalidSchedule {
        schedule: schedule.to_string(),
        reason: reason.to_string(),
    };
    if schedule.contains("second") {
        return Err(invalid("sub-minute schedules need pg_cron 1.5 or later"));
    }
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    if fields.len() != 5 {
        return Err(invalid(&format!(
            "it has {} fields, cron expressions have 5 (minute hour day-of-month month day-of-week)",
            fields.len()
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '*' | '/' | ',' | '-');
    if let Some(field) = fields.iter().find(|f| !f.chars().all(allowed)) {
        return Err(invalid(&format!(
            "field '{field}' has characters cron does not use"
        )));
    }
    Ok(())
}

/// How to reach pg_cron's database when it is not the application's.
///
/// ```
/// use token_janitor::DatabaseUrl;
/// use token_janitor::operator::{CronDatabase, MigrateOptions};
///
/// # fn options(app: &DatabaseUrl) -> token_janitor::Result<MigrateOptions> {
/// // pg_cron lives in database postgres (cron.database_name), the app in app.
/// let cron = DatabaseUrl::parse("postgres://admin@localhost/postgres")?;
/// Ok(MigrateOptions {
///     cron_database: Some(CronDatabase::At(cron)),
///     ..MigrateOptions::default()
/// })
/// # }
/// ```
#[derive(Debug, Clone)]
pub enum CronDatabase {
    /// The application's URL (server, role, TLS settings) with
    /// cron.database_name as its database: what the command line does.
    Like(DatabaseUrl),
    /// Exactly this URL (`--cron-database-url`).
    At(DatabaseUrl),
}

/// The checked connection to pg_cron's database when it is not the
/// application's.
pub struct CronConnection {
    /// Connected to pg_cron's database.
    pub client: Client,
    /// The application's database, where the job runs.
    pub app_database: String,
}

/// Finds the database pg_cron lives in, as seen from the application's
/// connection, and connects there when it is another one. `None`: pg_cron
/// lives in the application's database.
///
/// # Errors
/// [`Error::PgCronNotPreloaded`]; [`Error::PgCronWrongDatabase`] when pg_cron
/// lives elsewhere and `how` is `None` (or names another database than
/// cron.database_name); [`Error::CronDatabase`] when it cannot be reached.
pub async fn connect_cron_database(
    app: &Client,
    how: Option<&CronDatabase>,
) -> Result<Option<CronConnection>> {
    // shared_preload_libraries and cron.database_name are readable only by
    // superusers and pg_read_all_settings; anyone can see which database the
    // pg_cron launcher serves.
    let row = app
        .query_one(
            &format!("WITH me AS (
                 SELECT coalesce((SELECT rolsuper FROM pg_catalog.pg_roles
                                  WHERE rolname = current_user), false)
                        OR pg_catalog.pg_has_role(current_user, 'pg_read_all_settings', 'USAGE') AS reader
             )
             SELECT CASE WHEN reader THEN current_setting('shared_preload_libraries') END,
                    CASE WHEN reader THEN current_setting('cron.database_name', true) END,
                    {LAUNCHER_DATABASE},
                    current_database()::text
             FROM me"),
            &[],
        )
        .await
        .map_err(db("reading pg_cron settings"))?;
    let preload: Option<String> = row.get(0);
    let setting: Option<String> = row.get(1);
    let launcher: Option<String> = row.get(2);
    let current: String = row.get(3);

    let configured = match preload {
        Some(preload) => {
            let preloaded = preload
                .split(',')
                .any(|lib| lib.trim().trim_matches('"') == "pg_cron");
            if !preloaded {
                return Err(Error::PgCronNotPreloaded {
                    evidence: format!("shared_preload_libraries is '{preload}'"),
                });
            }
            // pg_cron defaults cron.database_name to 'postgres' when unset.
            setting
                .filter(|name| !name.is_empty())
                .unwrap_or_else(|| "postgres".to_string())
        }
        None => launcher.ok_or_else(|| Error::PgCronNotPreloaded {
            evidence: "no pg_cron launcher is running".to_string(),
        })?,
    };
    if configured == current {
        return Ok(None);
    }
    let url = match how {
        None => {
            return Err(Error::PgCronWrongDatabase {
                configured,
                current,
            });
        }
        Some(CronDatabase::Like(url)) => url.with_dbname(&configured),
        Some(CronDatabase::At(url)) if url.dbname() != configured => {
            return Err(Error::PgCronWrongDatabase {
                configured,
                current: url.dbname(),
            });
        }
        Some(CronDatabase::At(url)) => url.clone(),
    };
    let client = url
        .connect()
        .await
        .map_err(|err| Error::CronDatabase { source: err })?;
    Ok(Some(CronConnection {
        client,
        app_database: current,
    }))
}

/// What token-janitor needs of pg_cron.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CronUse {
    /// migrate: that it may create the extension when it is missing and
    /// schedule the job. pg_cron's scheduler need not run yet: the job runs
    /// once it does.
    Schedule,
    /// verify, perhaps as the monitoring role: that the extension is
    /// installed and pg_cron's scheduler runs for its database. Nothing only
    /// scheduling needs (creating the extension, USAGE on schema cron,
    /// EXECUTE on cron.schedule_in_database) is asked of the role.
    Read,
}

/// pg_cron as [`check_pg_cron`] found it.
#[derive(Debug, Clone)]
pub struct PgCron {
    /// The extension's version; `None` when it is missing and this role, a
    /// superuser, may create it ([`CronUse::Schedule`] only).
    pub version: Option<String>,
    /// pg_cron's database.
    pub database: String,
}

/// Diagnoses pg_cron for `need`, before anything changes: the one place that
/// says what is wrong with it and what to do, for migrate and verify alike.
/// In the application's database (`cron` is `None`) or pg_cron's.
///
/// [`CronUse::Schedule`]: the extension exists and this role may use schema
/// cron, or it may create the extension; from pg_cron's database into the
/// application's, also pg_cron 1.4+ and EXECUTE on cron.schedule_in_database;
/// and no job of this database's [`job_name`] that runs in another database.
///
/// [`CronUse::Read`]: pg_cron's scheduler runs for this database and the
/// extension is installed.
///
/// # Errors
/// [`Error::PgCronNotSuperuser`], [`Error::PgCronTooOld`],
/// [`Error::PgCronNoPermission`] or [`Error::PgCronJobElsewhere`] for
/// scheduling; [`Error::PgCronWrongDatabase`], [`Error::PgCronNotInstalled`]
/// or [`Error::PgCronNotPreloaded`] for reading; [`Error::Db`] when the
/// catalogs cannot be read.
pub async fn check_pg_cron(
    app: &Client,
    cron: Option<&CronConnection>,
    schema: &Schema,
    need: CronUse,
) -> Result<PgCron> {
    let client = cron.map_or(app, |c| &c.client);
    let row = client
        .query_one(
            &format!("SELECT (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'),
                    coalesce((SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user), false),
                    current_user::text,
                    current_database()::text,
                    usage,
                    CASE WHEN usage THEN pg_catalog.to_regprocedure(
                        'cron.schedule_in_database(text, text, text, text, text, boolean)') IS NOT NULL END,
                    CASE WHEN usage THEN pg_catalog.has_function_privilege(current_user,
                        pg_catalog.to_regprocedure('cron.schedule_in_database(text, text, text, text, text, boolean)'),
                        'EXECUTE') END,
                    {LAUNCHER_DATABASE}
             FROM (SELECT pg_catalog.has_schema_privilege(current_user,
                       (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = 'cron'), 'USAGE')) s(usage)"),
            &[],
        )
        .await
        .map_err(db("reading pg_cron's installation"))?;
    let version: Option<String> = row.get(0);
    let superuser: bool = row.get(1);
    let role: String = row.get(2);
    let database: String = row.get(3);
    if need == CronUse::Read {
        let launcher: Option<String> = row.get(7);
        return match (version, launcher) {
            (_, Some(served)) if served != database => Err(Error::PgCronWrongDatabase {
                configured: served,
                current: database,
            }),
            (None, _) => Err(Error::PgCronNotInstalled { database }),
            (Some(_), None) => Err(Error::PgCronNotPreloaded {
                evidence: "no pg_cron launcher is running".to_string(),
            }),
            (version, Some(_)) => Ok(PgCron { version, database }),
        };
    }
    let Some(version) = version else {
        return if superuser {
            Ok(PgCron {
                version: None,
                database,
            })
        } else {
            Err(Error::PgCronNotSuperuser { role, database })
        };
    };
    // Looking up a function in schema cron needs USAGE on it: with none, the
    // other two are NULL. cron.schedule needs USAGE too.
    let (usage, in_database, execute): (Option<bool>, Option<bool>, Option<bool>) =
        (row.get(4), row.get(5), row.get(6));
    let no_permission = |missing: &str| Error::PgCronNoPermission {
        role: role.clone(),
        database: database.clone(),
        missing: missing.to_string(),
    };
    if usage != Some(true) {
        return Err(no_permission("no USAGE on schema cron"));
    }
    if cron.is_some() {
        if in_database == Some(false) {
            return Err(Error::PgCronTooOld { version, database });
        }
        if execute != Some(true) {
            return Err(no_permission("no EXECUTE on cron.schedule_in_database"));
        }
    }
    // The job's name is this database's: a job of that name elsewhere (made
    // by hand, or left by a database since renamed) would be upserted.
    let app_database = cron.map_or(database.as_str(), |c| c.app_database.as_str());
    let job = job_name(app_database, schema.name());
    let other = client
        .query_opt(
            "SELECT jobid, database FROM cron.job WHERE jobname = $1 AND database <> $2",
            &[&job, &app_database],
        )
        .await
        .map_err(db("reading pg_cron's jobs"))?;
    if let Some(other) = other {
        return Err(Error::PgCronJobElsewhere {
            job,
            jobid: other.get(0),
            other: other.get(1),
            database: app_database.to_string(),
        });
    }
    Ok(PgCron {
        version: Some(version),
        database,
    })
}

/// The cleanup job as migrate left it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledJob {
    /// cron.job.jobid.
    pub jobid: i64,
    /// Its name, [`job_name`] of the application's database and schema.
    pub name: String,
    /// Its schedule (UTC).
    pub schedule: String,
}

/// Creates the pg_cron extension when missing and upserts this database's
/// cleanup job ([`job_name`]), in the application's database (`cron` is
/// `None`) or, from pg_cron's database, with `cron.schedule_in_database` so
/// that it runs in the application's. Both upsert by job name and user, so
/// this is safe on every deploy. `schedule`: the one to set, or `None` to
/// keep the schedule of the job that runs this database's cleanup (an
/// earlier release's `refresh-token-cleanup` included), else
/// [`DEFAULT_SCHEDULE`]; a paused job (`active = false`) stays paused. `username` is the role the job runs as (default:
/// the connected role; another role needs a superuser, and pg_cron refuses
/// one without LOGIN: the job connects as it); in the application's database
/// the superuser lets it use schema `cron` (to read its job and prune its
/// run history).
///
/// The job is read back: it must run exactly [`Schema::job_command`] in the
/// application's database. Then every other job that runs this database's
/// cleanup (an earlier release's, one scheduled for another role before the
/// owner role) is removed, and so is one of this name that connects to a
/// port the server no longer listens on; jobs of other databases are left
/// alone.
///
/// # Errors
/// [`Error::InvalidSchedule`] when pg_cron refuses the schedule;
/// [`Error::JobNotAsScheduled`] when the job read back runs something else or
/// elsewhere; [`Error::Db`] for anything else.
pub async fn install_schedule(
    app: &Client,
    cron: Option<&CronConnection>,
    schema: &Schema,
    schedule: Option<&str>,
    username: Option<&str>,
) -> Result<ScheduledJob> {
    let command = schema.job_command();
    let client = cron.map_or(app, |c| &c.client);
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        .await
        .map_err(db("creating the pg_cron extension"))?;
    let database: String = match cron {
        Some(cron) => cron.app_database.clone(),
        None => app
            .query_one("SELECT current_database()::text", &[])
            .await
            .map_err(db("reading the database name"))?
            .get(0),
    };
    let name = job_name(&database, schema.name());
    // The job that runs this database's cleanup now, this name's first: an
    // operator's schedule and pause carry over to the job that replaces it.
    let current: Option<(String, bool)> = client
        .query_opt(
            "SELECT schedule, active FROM cron.job WHERE database = $1 AND command = $2
             ORDER BY coalesce(jobname = $3, false) DESC, jobid LIMIT 1",
            &[&database, &command, &name],
        )
        .await
        .map_err(db("reading the cleanup job"))?
        .map(|row| (row.get(0), row.get(1)));
    let paused = current.as_ref().is_some_and(|(_, active)| !active);
    let schedule = match (schedule, current) {
        (Some(schedule), _) => schedule.to_string(),
        (None, Some((schedule, _))) => schedule,
        (None, None) => DEFAULT_SCHEDULE.to_string(),
    };
    // pg_cron connects a job to the port the server had when the job was
    // scheduled, and its upsert keeps that port: after a restart on another
    // port, or a restore of pg_cron's database into another server, every
    // run fails with "connection failed". Such a job is scheduled afresh.
    client
        .execute(
            "SELECT cron.unschedule(j.jobid) FROM cron.job j
             WHERE j.jobname = $1 AND j.database = $2
               AND j.username = coalesce($3, current_user)
               AND j.nodeport <> pg_catalog.current_setting('port')::int",
            &[&name, &database, &username],
        )
        .await
        .map_err(db("removing a cleanup job that connects to another port"))?;
    let upsert = if cron.is_none() && username.is_none() {
        client
            .query_one(
                "SELECT cron.schedule(job_name => $1, schedule => $2, command => $3)",
                &[&name, &schedule, &command],
            )
            .await
    } else {
        client
            .query_one(
                "SELECT cron.schedule_in_database(job_name => $1, schedule => $2, command => $3,
                     database => $4, username => $5)",
                &[&name, &schedule, &command, &database, &username],
            )
            .await
    };
    let jobid: i64 = upsert
        .map_err(|err| match err.as_db_error() {
            Some(db_err) if db_err.message().contains("invalid schedule") => {
                Error::InvalidSchedule {
                    schedule: schedule.clone(),
                    reason: db_err.message().to_string(),
                }
            }
            _ => db("scheduling the cleanup job with pg_cron")(err).into(),
        })?
        .get(0);
    let found = client
        .query_opt(
            "SELECT database, command FROM cron.job WHERE jobid = $1",
            &[&jobid],
        )
        .await
        .map_err(db("reading back the cleanup job"))?;
    let found: Option<(String, String)> = found.map(|row| (row.get(0), row.get(1)));
    if found.as_ref() != Some(&(database.clone(), command.clone())) {
        return Err(Error::JobNotAsScheduled {
            job: name,
            jobid,
            command,
            database,
            found: match found {
                Some((other, command)) => format!("it runs `{command}` in database '{other}'"),
                None => "it is not in cron.job".to_string(),
            },
        });
    }
    if paused {
        client
            .execute(
                "SELECT cron.alter_job(job_id => $1, active => false)",
                &[&jobid],
            )
            .await
            .map_err(db("keeping the cleanup job paused"))?;
    }
    if let (None, Some(role)) = (cron, username) {
        // The job's role reads its job and prunes its run history
        // (auth.cleanup_job, auth._prune_cleanup_history); pg_cron leaves the
        // use of its schema to the administrator.
        client
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA cron TO {}",
                crate::owner::ident(role)
            ))
            .await
            .map_err(db(format!("letting role {role} use schema cron")))?;
    }
    client
        .execute(
            "SELECT cron.unschedule(j.jobid) FROM cron.job j
             WHERE j.database = $1 AND (j.command = $2 OR j.jobname = $3) AND j.jobid <> $4",
            &[&database, &command, &name, &jobid],
        )
        .await
        .map_err(db("removing the database's other cleanup jobs"))?;
    Ok(ScheduledJob {
        jobid,
        name,
        schedule,
    })
}

/// The cleanup job as pg_cron has it, with its last finished run.
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// cron.job.jobid.
    pub jobid: i64,
    /// cron.job.jobname (NULL for a job scheduled without a name).
    pub name: Option<String>,
    /// Cron expression (UTC).
    pub schedule: String,
    /// The job's command.
    pub command: String,
    /// cron.job.active.
    pub active: bool,
    /// 'succeeded' or 'failed', when it has run.
    pub last_status: Option<String>,
    /// The last finished run's message.
    pub last_message: Option<String>,
    /// The last finished run's start, as text.
    pub last_start: Option<String>,
}

/// Reads the cleanup job, found by database and command (not by name): the
/// job that runs exactly [`Schema::job_command`] in the application's database,
/// through `auth.cleanup_job()` there (in `schema`) (`cron` is `None`; the monitoring role
/// may call it), or from cron.job in pg_cron's database. There pg_cron's row security shows a non-superuser only its own
/// jobs, so read it as the role that ran migrate (or a superuser). `None`
/// when pg_cron or the job is missing.
///
/// # Errors
/// The driver's error when a query fails.
pub async fn find_job(
    app: &Client,
    cron: Option<&CronConnection>,
    schema: &Schema,
) -> Result<Option<JobInfo>, tokio_postgres::Error> {
    let row = match cron {
        None => {
            app.query_opt(
                &*schema.sql(
                    "SELECT jobid, jobname, schedule, command, active, last_status, last_message,
                            last_start::text
                     FROM auth.cleanup_job()",
                ),
                &[],
            )
            .await?
        }
        Some(cron) => {
            let installed: bool = cron
                .client
                .query_one(
                    "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron')",
                    &[],
                )
                .await?
                .get(0);
            if !installed {
                return Ok(None);
            }
            cron.client
                .query_opt(
                    "SELECT j.jobid, j.jobname::text, j.schedule, j.command, j.active, d.status,
                            d.return_message, d.start_time::text
                     FROM cron.job j
                     LEFT JOIN LATERAL (
                         SELECT r.status, r.return_message, r.start_time FROM cron.job_run_details r
                         WHERE r.jobid = j.jobid AND r.status IN ('succeeded', 'failed')
                         ORDER BY r.start_time DESC LIMIT 1) d ON true
                     WHERE j.database = $1 AND j.command = $2
                     ORDER BY j.jobid LIMIT 1",
                    &[&cron.app_database, &schema.job_command()],
                )
                .await?
        }
    };
    Ok(row.map(|r| JobInfo {
        jobid: r.get(0),
        name: r.get(1),
        schedule: r.get(2),
        command: r.get(3),
        active: r.get(4),
        last_status: r.get(5),
        last_message: r.get(6),
        last_start: r.get(7),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_names_carry_database_and_schema_within_pg_crons_63_bytes() {
        assert_eq!(job_name("app", "auth"), "token-janitor cleanup: app.auth");
        let long = "a".repeat(63);
        let name = job_name(&long, "auth");
        assert_eq!(name.len(), MAX_JOB_NAME);
        assert!(name.starts_with("token-janitor cleanup: aaaa"), "{name}");
        assert_ne!(name, job_name(&format!("{}b", &long[..62]), "auth"));
        assert_ne!(name, job_name(&long, "other"));
        let accented = job_name(&"é".repeat(31), "auth");
        assert!(
            accented.len() <= MAX_JOB_NAME && accented.contains('~'),
            "{accented}"
        );
    }
}
