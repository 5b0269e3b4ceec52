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
use crate::error::{Error, Result, db};

/// The pg_cron job name (pinned).
pub const JOB_NAME: &str = "refresh-token-cleanup";
/// The job's command (pinned): anything before the CALL in the same command
/// string would open a transaction and break the procedure's COMMITs.
pub const JOB_COMMAND: &str = "CALL auth.run_token_cleanup()";
/// The default schedule: every five minutes, UTC.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";

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
    let client = url.connect().await.map_err(|err| Error::CronDatabase {
        source: Box::new(err),
    })?;
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
/// application's, also pg_cron 1.4+, EXECUTE on cron.schedule_in_database,
/// and no job of this name and role that runs in a third database.
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
    let Some(cron) = cron else {
        return Ok(PgCron {
            version: Some(version),
            database,
        });
    };
    if in_database == Some(false) {
        return Err(Error::PgCronTooOld { version, database });
    }
    if execute != Some(true) {
        return Err(no_permission("no EXECUTE on cron.schedule_in_database"));
    }
    let other = client
        .query_opt(
            "SELECT jobid, database FROM cron.job
             WHERE jobname = $1 AND username = current_user AND database <> $2",
            &[&JOB_NAME, &cron.app_database],
        )
        .await
        .map_err(db("reading pg_cron's jobs"))?;
    if let Some(other) = other {
        return Err(Error::PgCronJobElsewhere {
            job: JOB_NAME,
            jobid: other.get(0),
            role,
            other: other.get(1),
            database: cron.app_database.clone(),
        });
    }
    Ok(PgCron {
        version: Some(version),
        database,
    })
}

/// Creates the pg_cron extension when missing and upserts the cleanup job,
/// in the application's database (`cron` is `None`) or, from pg_cron's
/// database, with `cron.schedule_in_database` so that it runs in the
/// application's. Both upsert by job name and user, so this is safe on every
/// deploy. `username` is the role the job runs as (default: the connected
/// role; another role needs a superuser, and pg_cron refuses one without
/// LOGIN: the job connects as it); in the application's database the
/// superuser lets it use schema `cron` (to read its job and prune its run
/// history). The job of that name for that database scheduled for another
/// role (by an install from before the owner role) is removed, and so is
/// one that connects to a port the server no longer listens on. Returns the
/// job id.
///
/// # Errors
/// [`Error::InvalidSchedule`] when pg_cron refuses the schedule; [`Error::Db`]
/// for anything else.
pub async fn install_schedule(
    app: &Client,
    cron: Option<&CronConnection>,
    schedule: &str,
    username: Option<&str>,
) -> Result<i64> {
    let client = cron.map_or(app, |c| &c.client);
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        .await
        .map_err(db("creating the pg_cron extension"))?;
    let database = cron.map(|c| c.app_database.as_str());
    // pg_cron connects a job to the port the server had when the job was
    // scheduled, and its upsert keeps that port: after a restart on another
    // port, or a restore of pg_cron's database into another server, every
    // run fails with "connection failed". Such a job is scheduled afresh.
    client
        .execute(
            "SELECT cron.unschedule(j.jobid) FROM cron.job j
             WHERE j.jobname = $1 AND j.database = coalesce($2, current_database())
               AND j.username = coalesce($3, current_user)
               AND j.nodeport <> pg_catalog.current_setting('port')::int",
            &[&JOB_NAME, &database, &username],
        )
        .await
        .map_err(db("removing a cleanup job that connects to another port"))?;
    let upsert = if database.is_none() && username.is_none() {
        client
            .query_one(
                "SELECT cron.schedule(job_name => $1, schedule => $2, command => $3)",
                &[&JOB_NAME, &schedule, &JOB_COMMAND],
            )
            .await
    } else {
        client
            .query_one(
                "SELECT cron.schedule_in_database(job_name => $1, schedule => $2, command => $3,
                     database => coalesce($4, current_database()), username => $5)",
                &[&JOB_NAME, &schedule, &JOB_COMMAND, &database, &username],
            )
            .await
    };
    let row = upsert.map_err(|err| match err.as_db_error() {
        Some(db_err) if db_err.message().contains("invalid schedule") => Error::InvalidSchedule {
            schedule: schedule.to_string(),
            reason: db_err.message().to_string(),
        },
        _ => db("scheduling the cleanup job with pg_cron")(err),
    })?;
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
             WHERE j.jobname = $1 AND j.database = coalesce($2, current_database())
               AND j.username <> coalesce($3, current_user)",
            &[&JOB_NAME, &database, &username],
        )
        .await
        .map_err(db("removing the cleanup job scheduled for another role"))?;
    Ok(row.get(0))
}

/// The cleanup job as pg_cron has it, with its last finished run.
#[derive(Debug, Clone)]
pub struct JobInfo {
    /// cron.job.jobid.
    pub jobid: i64,
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

/// Reads the cleanup job: through `auth.cleanup_job()` in the application's
/// database (`cron` is `None`; the monitoring role may call it), or from
/// cron.job in pg_cron's database, the job that runs in the application's
/// database. There pg_cron's row security shows a non-superuser only its own
/// jobs, so read it as the role that ran migrate (or a superuser). `None`
/// when pg_cron or the job is missing.
///
/// # Errors
/// The driver's error when a query fails.
pub async fn find_job(
    app: &Client,
    cron: Option<&CronConnection>,
) -> Result<Option<JobInfo>, tokio_postgres::Error> {
    let row = match cron {
        None => {
            app.query_opt(
                "SELECT jobid, schedule, command, active, last_status, last_message, last_start::text
                 FROM auth.cleanup_job()",
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
                    "SELECT j.jobid, j.schedule, j.command, j.active, d.status, d.return_message,
                            d.start_time::text
                     FROM cron.job j
                     LEFT JOIN LATERAL (
                         SELECT r.status, r.return_message, r.start_time FROM cron.job_run_details r
                         WHERE r.jobid = j.jobid AND r.status IN ('succeeded', 'failed')
                         ORDER BY r.start_time DESC LIMIT 1) d ON true
                     WHERE j.jobname = $1 AND j.database = $2
                     ORDER BY j.jobid LIMIT 1",
                    &[&JOB_NAME, &cron.app_database],
                )
                .await?
        }
    };
    Ok(row.map(|r| JobInfo {
        jobid: r.get(0),
        schedule: r.get(1),
        command: r.get(2),
        active: r.get(3),
        last_status: r.get(4),
        last_message: r.get(5),
        last_start: r.get(6),
    }))
}
