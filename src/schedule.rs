//! pg_cron: diagnosing why it cannot be used, creating the extension and
//! upserting the cleanup job.

use tokio_postgres::Client;

use crate::error::{Error, Result, db};

/// The pg_cron job name (pinned).
pub const JOB_NAME: &str = "refresh-token-cleanup";
/// The job's command (pinned): anything before the CALL in the same command
/// string would open a transaction and break the procedure's COMMITs.
pub const JOB_COMMAND: &str = "CALL auth.run_token_cleanup()";
/// The default schedule: every five minutes, UTC.
pub const DEFAULT_SCHEDULE: &str = "*/5 * * * *";

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

/// Checks that pg_cron can be used from this connection: preloaded, this is
/// cron.database_name, and the extension exists or this role may create it.
///
/// # Errors
/// [`Error::PgCronNotPreloaded`], [`Error::PgCronWrongDatabase`] or
/// [`Error::PgCronNotSuperuser`].
pub async fn check_pg_cron(client: &Client) -> Result<()> {
    // shared_preload_libraries and cron.database_name are readable only by
    // superusers and pg_read_all_settings; anyone can see which database the
    // pg_cron launcher serves in pg_stat_activity.
    let row = client
        .query_one(
            "WITH me AS (
                 SELECT coalesce((SELECT rolsuper FROM pg_catalog.pg_roles
                                  WHERE rolname = current_user), false) AS superuser,
                        pg_catalog.pg_has_role(current_user, 'pg_read_all_settings', 'USAGE') AS reader
             )
             SELECT CASE WHEN superuser OR reader
                         THEN current_setting('shared_preload_libraries') END,
                    CASE WHEN superuser OR reader
                         THEN current_setting('cron.database_name', true) END,
                    (SELECT datname::text FROM pg_catalog.pg_stat_activity
                     WHERE backend_type = 'pg_cron launcher' LIMIT 1),
                    current_database()::text,
                    current_user::text,
                    superuser,
                    EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron')
             FROM me",
            &[],
        )
        .await
        .map_err(db("reading pg_cron settings"))?;
    let preload: Option<String> = row.get(0);
    let setting: Option<String> = row.get(1);
    let launcher: Option<String> = row.get(2);
    let current: String = row.get(3);
    let role: String = row.get(4);
    let superuser: bool = row.get(5);
    let installed: bool = row.get(6);

    let configured = match preload {
        Some(preload) => {
            let preloaded = preload
                .split(',')
                .any(|lib| lib.trim().trim_matches('"') == "pg_cron");
            if !preloaded {
                return Err(Error::PgCronNotPreloaded { current: preload });
            }
            // pg_cron defaults cron.database_name to 'postgres' when unset.
            Some(
                setting
                    .filter(|name| !name.is_empty())
                    .unwrap_or_else(|| "postgres".to_string()),
            )
        }
        None => launcher,
    };
    if let Some(configured) = configured
        && configured != current
    {
        return Err(Error::PgCronWrongDatabase {
            configured,
            current,
        });
    }
    if !installed && !superuser {
        return Err(Error::PgCronNotSuperuser { role });
    }
    Ok(())
}

/// Creates the pg_cron extension when missing and upserts the cleanup job
/// for `job_role`, the role the job runs as (`cron.schedule` and
/// `cron.schedule_in_database` upsert by job name and user, so this is safe
/// on every deploy). A superuser schedules it for `job_role` with
/// `cron.schedule_in_database` (only a superuser may name another user, and
/// pg_cron refuses a role without LOGIN: the job connects as it); any other
/// role schedules its own, and the superuser lets `job_role` use schema
/// `cron` (to read its job and prune its run history). The job of that name in this database scheduled
/// for another role (by an install from before the owner role) is removed.
/// Returns the job id.
///
/// # Errors
/// [`Error::InvalidSchedule`] when pg_cron refuses the schedule; [`Error::Db`]
/// for anything else.
pub async fn install_schedule(client: &Client, schedule: &str, job_role: &str) -> Result<i64> {
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_cron")
        .await
        .map_err(db("creating the pg_cron extension"))?;
    let own: bool = client
        .query_one("SELECT current_user = $1", &[&job_role])
        .await
        .map_err(db("reading the connected role"))?
        .get(0);
    if !own {
        // The job's role reads its job and prunes its run history
        // (auth.cleanup_job, auth.prune_cleanup_history); pg_cron leaves the
        // use of its schema to the administrator.
        client
            .batch_execute(&format!(
                "GRANT USAGE ON SCHEMA cron TO {}",
                crate::owner::ident(job_role)
            ))
            .await
            .map_err(db(format!("letting role {job_role} use schema cron")))?;
    }
    let upsert = if own {
        "SELECT cron.schedule(job_name => $1, schedule => $2, command => $3)"
    } else {
        "SELECT cron.schedule_in_database(job_name => $1, schedule => $2, command => $3,
                                          database => current_database(), username => $4)"
    };
    let params: &[&(dyn tokio_postgres::types::ToSql + Sync)] = if own {
        &[&JOB_NAME, &schedule, &JOB_COMMAND]
    } else {
        &[&JOB_NAME, &schedule, &JOB_COMMAND, &job_role]
    };
    let row = client
        .query_one(upsert, params)
        .await
        .map_err(|err| match err.as_db_error() {
            Some(db_err) if db_err.message().contains("invalid schedule") => {
                Error::InvalidSchedule {
                    schedule: schedule.to_string(),
                    reason: db_err.message().to_string(),
                }
            }
            _ => db(format!(
                "scheduling the cleanup job with pg_cron to run as role {job_role}"
            ))(err),
        })?;
    client
        .execute(
            "SELECT cron.unschedule(j.jobid) FROM cron.job j
             WHERE j.jobname = $1 AND j.database = current_database() AND j.username <> $2",
            &[&JOB_NAME, &job_role],
        )
        .await
        .map_err(db("removing the cleanup job scheduled for another role"))?;
    Ok(row.get(0))
}
