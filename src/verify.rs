//! `verify`: proves on a live database that the cleanup is installed,
//! scheduled and working, without changing any data. One [`Check`] per
//! property, each with its evidence and, when it fails, the remedy.

use serde::Serialize;
use tokio_postgres::Client;

use crate::db::DatabaseUrl;
use crate::error::describe;
use crate::migrate::{embedded_migrations, index_statements};
use crate::schedule::{self, CronDatabase, JOB_COMMAND, JOB_NAME, JobInfo, LAUNCHER_DATABASE};

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    /// As it should be.
    Pass,
    /// Worth a look, not a failure (e.g. no run yet on a fresh install).
    Warn,
    /// Broken: verify exits non-zero.
    Fail,
}

/// One verified property.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    /// Stable name, e.g. `indexes` or `self-test`.
    pub name: &'static str,
    /// PASS, WARN or FAIL.
    pub outcome: Outcome,
    /// What was seen.
    pub evidence: String,
    /// What to do, when the check did not pass.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remedy: Option<String>,
}

impl Check {
    fn pass(name: &'static str, evidence: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Pass,
            evidence: evidence.into(),
            remedy: None,
        }
    }

    fn warn(name: &'static str, evidence: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Warn,
            evidence: evidence.into(),
            remedy: Some(remedy.into()),
        }
    }

    fn fail(name: &'static str, evidence: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            name,
            outcome: Outcome::Fail,
            evidence: evidence.into(),
            remedy: Some(remedy.into()),
        }
    }

    /// A check that could not run because a query failed (privileges, a
    /// missing object): a failure that says which query and why.
    fn error(name: &'static str, err: &tokio_postgres::Error) -> Self {
        Self::fail(
            name,
            format!("query failed: {}", describe(err)),
            "grant this role read access to schemas auth and cron (or run verify as the \
             migrating role), and run token-janitor migrate if objects are missing",
        )
    }
}

/// All checks of one verify run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// True when no check failed.
    pub ok: bool,
    /// The checks, in the order they ran.
    pub checks: Vec<Check>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for check in &self.checks {
            let outcome = match check.outcome {
                Outcome::Pass => "PASS",
                Outcome::Warn => "WARN",
                Outcome::Fail => "FAIL",
            };
            write!(f, "{outcome} {:<13} {}", check.name, check.evidence)?;
            if let Some(remedy) = &check.remedy {
                write!(f, " -> {remedy}")?;
            }
            writeln!(f)?;
        }
        let failed = self
            .checks
            .iter()
            .filter(|c| c.outcome == Outcome::Fail)
            .count();
        let warned = self
            .checks
            .iter()
            .filter(|c| c.outcome == Outcome::Warn)
            .count();
        write!(
            f,
            "{} checks: {} passed, {failed} failed, {warned} warnings",
            self.checks.len(),
            self.checks.len() - failed - warned
        )
    }
}

/// What verify expects of the installation.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The schedule `migrate` installed; `None` when it ran with
    /// `--no-schedule` (pg_cron checks are then skipped). Default: the
    /// default schedule.
    pub schedule: Option<String>,
    /// Due rows above which the backlog check warns. Default: 1,000,000.
    pub backlog_warn: i64,
    /// How to reach pg_cron's database when it is not this one, to check the
    /// job there. Default: `None` (pg_cron must live in this database).
    pub cron_database: Option<CronDatabase>,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self {
            schedule: Some(crate::schedule::DEFAULT_SCHEDULE.to_string()),
            backlog_warn: 1_000_000,
            cron_database: None,
        }
    }
}

/// Runs every check against `url`. Never changes data: the one check that
/// writes (the self-test) does so in a subtransaction that is rolled back.
pub async fn verify(url: &DatabaseUrl, options: &VerifyOptions) -> Report {
    let mut checks = Vec::new();
    match url.connect().await {
        Ok(client) => {
            checks.push(Check::pass("connection", format!("connected to {url}")));
            run_checks(&client, options, &mut checks).await;
        }
        Err(err) => checks.push(Check::fail(
            "connection",
            err.to_string(),
            "fix --database-url / DATABASE_URL or start the server",
        )),
    }
    let ok = checks.iter().all(|c| c.outcome != Outcome::Fail);
    Report { ok, checks }
}

async fn run_checks(client: &Client, options: &VerifyOptions, checks: &mut Vec<Check>) {
    checks.push(server_version(client).await);
    let schema = migrations(client).await;
    let installed = schema.outcome != Outcome::Fail;
    checks.push(schema);
    if !installed {
        return;
    }
    checks.push(owner(client).await);
    checks.push(indexes(client).await);
    checks.push(plans(client).await);
    match &options.schedule {
        Some(schedule) => {
            match schedule::connect_cron_database(client, options.cron_database.as_ref()).await {
                Ok(cron_db) => {
                    checks.push(pg_cron(cron_db.as_ref().map_or(client, |c| &c.client)).await);
                    let found = schedule::find_job(client, cron_db.as_ref()).await;
                    checks.push(job(&found, schedule));
                    checks.push(last_job_run(&found));
                }
                Err(err) => checks.push(Check::fail(
                    "pg_cron",
                    err.to_string(),
                    "do what the message says, or verify with --no-schedule",
                )),
            }
        }
        None => checks.push(Check::warn(
            "schedule",
            "not checked (--no-schedule)",
            "make sure your own scheduler runs CALL auth.run_token_cleanup()",
        )),
    }
    checks.push(unfinished_runs(client).await);
    checks.push(recent_run(client, options.schedule.as_deref()).await);
    checks.push(backlog(client, options.backlog_warn).await);
    checks.push(self_test(client).await);
}

async fn server_version(client: &Client) -> Check {
    match client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await
    {
        Ok(row) => {
            let (num, text): (i32, String) = (row.get(0), row.get(1));
            if num >= 130_000 {
                Check::pass("server", format!("PostgreSQL {text}"))
            } else {
                Check::fail(
                    "server",
                    format!("PostgreSQL {text}"),
                    "token-janitor needs PostgreSQL 13 or later (tested on 15)",
                )
            }
        }
        Err(err) => Check::error("server", &err),
    }
}

async fn migrations(client: &Client) -> Check {
    const NAME: &str = "migrations";
    let rows = match client
        .query(
            "SELECT version::bigint, name, checksum FROM refinery_schema_history ORDER BY version",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) if err.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Check::fail(
                NAME,
                "no migration history (refinery_schema_history): the schema is not installed here",
                "run token-janitor migrate against this database",
            );
        }
        Err(err) => return Check::error(NAME, &err),
    };
    let embedded = embedded_migrations();
    for m in &embedded {
        match rows.iter().find(|r| r.get::<_, i64>(0) == m.version) {
            None => {
                return Check::fail(
                    NAME,
                    format!("V{}__{} is not applied", m.version, m.name),
                    "run token-janitor migrate",
                );
            }
            Some(row) if row.get::<_, String>(2) != m.checksum.to_string() => {
                return Check::fail(
                    NAME,
                    format!(
                        "applied migration V{}__{} differs from this binary's (checksum {} != {})",
                        m.version,
                        m.name,
                        row.get::<_, String>(2),
                        m.checksum
                    ),
                    "someone changed a released migration: restore it, or deploy the binary that matches this database",
                );
            }
            Some(_) => {}
        }
    }
    let newest = embedded.last().map(|m| m.version).unwrap_or(0);
    if let Some(row) = rows.iter().find(|r| r.get::<_, i64>(0) > newest) {
        return Check::warn(
            NAME,
            format!(
                "V{}__{} is applied but unknown to this binary",
                row.get::<_, i64>(0),
                row.get::<_, String>(1)
            ),
            "this binary is older than the database schema: upgrade token-janitor",
        );
    }
    Check::pass(NAME, format!("{} applied, none divergent", embedded.len()))
}

/// DESIGN.md §6 invariant 7: token-janitor's objects belong to a role that
/// is not a superuser, so no SECURITY DEFINER routine in auth runs as one.
async fn owner(client: &Client) -> Check {
    const NAME: &str = "owner";
    let row = match client
        .query_one(
            "SELECT o.rolname::text, o.rolsuper,
                    (SELECT count(*) FROM pg_catalog.pg_proc p
                     WHERE p.pronamespace = 'auth'::regnamespace AND p.prosecdef),
                    (SELECT pg_catalog.string_agg(p.oid::regprocedure::text || ' (' || r.rolname || ')', ', ')
                     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
                     WHERE p.pronamespace = 'auth'::regnamespace AND p.prosecdef AND r.rolsuper)
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
             WHERE c.oid = 'auth.cleanup_runs'::regclass",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(err) => return Check::error(NAME, &err),
    };
    let (owner, superuser, definers, superusers): (String, bool, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let remedy = "run token-janitor migrate as a superuser: it gives schema auth's token-janitor \
                  objects to the owner role (--owner-role, never a superuser)";
    if superuser {
        return Check::fail(
            NAME,
            format!("the tables belong to role {owner}, a superuser"),
            remedy,
        );
    }
    if let Some(superusers) = superusers {
        return Check::fail(
            NAME,
            format!("SECURITY DEFINER routines owned by a superuser: {superusers}"),
            remedy,
        );
    }
    Check::pass(
        NAME,
        format!(
            "tables owned by role {owner} (no superuser); none of the {definers} SECURITY \
             DEFINER routines in auth belongs to a superuser"
        ),
    )
}

async fn indexes(client: &Client) -> Check {
    const NAME: &str = "indexes";
    let wanted: Vec<String> = index_statements().into_iter().map(|i| i.name).collect();
    let rows = match client
        .query(
            "SELECT c.relname::text, i.indisvalid AND i.indisready
             FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             WHERE c.relnamespace = 'auth'::regnamespace AND c.relname = ANY ($1)",
            &[&wanted],
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) => return Check::error(NAME, &err),
    };
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|w| !rows.iter().any(|r| &r.get::<_, String>(0) == *w))
        .collect();
    let invalid: Vec<String> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| r.get(0))
        .collect();
    if !missing.is_empty() || !invalid.is_empty() {
        let mut evidence = Vec::new();
        if !missing.is_empty() {
            evidence.push(format!("missing: {missing:?}"));
        }
        if !invalid.is_empty() {
            evidence.push(format!("INVALID (interrupted build): {invalid:?}"));
        }
        return Check::fail(
            NAME,
            evidence.join("; "),
            "run token-janitor migrate: it builds missing indexes and rebuilds INVALID ones concurrently",
        );
    }
    Check::pass(
        NAME,
        format!("{} purge indexes present and valid", wanted.len()),
    )
}

async fn plans(client: &Client) -> Check {
    const NAME: &str = "plans";
    let rows = match client
        .query(
            "SELECT kind, step, seq_scan, plan FROM auth.explain_purge()",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) => return Check::error(NAME, &err),
    };
    let scanning: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| format!("{}/{}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    if scanning.is_empty() {
        Check::pass(
            NAME,
            format!("all {} purge queries are index scans", rows.len()),
        )
    } else {
        Check::fail(
            NAME,
            format!("sequential scan in {}", scanning.join(", ")),
            "an index is missing or unusable: run token-janitor migrate, then \
             SELECT plan FROM auth.explain_purge() to see the plan",
        )
    }
}

async fn pg_cron(client: &Client) -> Check {
    const NAME: &str = "pg_cron";
    let row = match client
        .query_one(
            &format!(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'),
                        (SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'pg_cron'),
                        {LAUNCHER_DATABASE},
                        current_database()::text"
            ),
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(err) => return Check::error(NAME, &err),
    };
    let (installed, version, launcher, current): (bool, Option<String>, Option<String>, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    match (installed, launcher) {
        (true, Some(db)) if db == current => Check::pass(
            NAME,
            format!(
                "extension {} installed in '{current}', scheduler running for it",
                version.unwrap_or_default()
            ),
        ),
        (_, Some(db)) if db != current => Check::fail(
            NAME,
            format!("pg_cron serves database '{db}' (cron.database_name), not '{current}'"),
            format!(
                "run migrate and verify against '{db}', or set cron.database_name = '{current}' and restart"
            ),
        ),
        (true, _) => Check::fail(
            NAME,
            "extension installed but no pg_cron launcher is running",
            "add pg_cron to shared_preload_libraries and restart PostgreSQL",
        ),
        (false, _) => Check::fail(
            NAME,
            "pg_cron is not installed in this database",
            "run token-janitor migrate (as a superuser), or verify with --no-schedule",
        ),
    }
}

fn job(found: &Result<Option<JobInfo>, tokio_postgres::Error>, schedule: &str) -> Check {
    const NAME: &str = "job";
    let found = match found {
        Ok(found) => found,
        Err(err) => return Check::error(NAME, err),
    };
    let remedy = "run token-janitor migrate (with the --schedule you want) to re-install the job";
    let Some(job) = found else {
        return Check::fail(
            NAME,
            format!(
                "no pg_cron job named {JOB_NAME} (in pg_cron's database a role sees only its own \
                 jobs: verify as the role that ran migrate)"
            ),
            remedy,
        );
    };
    if job.command != JOB_COMMAND {
        return Check::fail(
            NAME,
            format!(
                "job runs {:?}, expected exactly {JOB_COMMAND:?}",
                job.command
            ),
            remedy,
        );
    }
    if !job.active {
        return Check::fail(
            NAME,
            "job is inactive (cron.job.active = false)",
            format!(
                "SELECT cron.alter_job({}, active => true) in pg_cron's database, or {remedy}",
                job.jobid
            ),
        );
    }
    if job.schedule != schedule {
        return Check::fail(
            NAME,
            format!("job runs on '{}', expected '{schedule}'", job.schedule),
            "pass verify the --schedule that migrate installed, or re-run migrate with it",
        );
    }
    Check::pass(
        NAME,
        format!("{JOB_NAME} active on '{schedule}' (UTC) running `{JOB_COMMAND}`"),
    )
}

fn last_job_run(found: &Result<Option<JobInfo>, tokio_postgres::Error>) -> Check {
    const NAME: &str = "last-job-run";
    let job = match found {
        Ok(job) => job.as_ref(),
        Err(err) => return Check::error(NAME, err),
    };
    match job.and_then(|j| Some((j.last_status.as_deref()?, j))) {
        None => Check::warn(
            NAME,
            "pg_cron has not run the job yet",
            "expected on a fresh install; check again after the first scheduled time",
        ),
        Some(("succeeded", job)) => Check::pass(
            NAME,
            format!("succeeded at {}", job.last_start.as_deref().unwrap_or("?")),
        ),
        Some((_, job)) => Check::fail(
            NAME,
            format!(
                "failed at {}: {}",
                job.last_start.as_deref().unwrap_or("?"),
                job.last_message.as_deref().unwrap_or("(no message)")
            ),
            "read the error in auth.cleanup_runs and cron.job_run_details, fix it, then CALL auth.run_token_cleanup() to confirm",
        ),
    }
}

async fn unfinished_runs(client: &Client) -> Check {
    const NAME: &str = "unfinished";
    let row = match client
        .query_one(
            "SELECT count(*), min(r.started_at)::text
             FROM auth.cleanup_runs r, auth.cleanup_policy p
             WHERE r.status = 'running' AND r.started_at < now() - p.max_runtime - interval '1 minute'",
            &[],
        )
        .await
    {
        Ok(row) => row,
        Err(err) => return Check::error(NAME, &err),
    };
    let stuck: i64 = row.get(0);
    if stuck == 0 {
        Check::pass(NAME, "no run left unfinished past max_runtime")
    } else {
        Check::fail(
            NAME,
            format!(
                "{stuck} run(s) still 'running' past max_runtime, the oldest from {}",
                row.get::<_, Option<&str>>(1).unwrap_or("?")
            ),
            "a run was killed or is stuck on a lock: look for it in pg_stat_activity; the next run marks killed runs failed",
        )
    }
}

/// Minutes between runs for the common cron shapes; a week otherwise.
fn schedule_minutes(schedule: &str) -> i64 {
    let fields: Vec<&str> = schedule.split_whitespace().collect();
    match fields.as_slice() {
        ["*", "*", "*", "*", "*"] => 1,
        [m, "*", "*", "*", "*"] => m
            .strip_prefix("*/")
            .and_then(|n| n.parse().ok())
            .unwrap_or(60),
        [_, h, "*", "*", "*"] => h
            .strip_prefix("*/")
            .and_then(|n| n.parse::<i64>().ok())
            .map_or(24 * 60, |n| n * 60),
        _ => 7 * 24 * 60,
    }
}

async fn recent_run(client: &Client, schedule: Option<&str>) -> Check {
    const NAME: &str = "recent-run";
    let every = schedule.map_or(24 * 60, schedule_minutes);
    let row = match client
        .query_opt(
            "SELECT r.status, r.error, r.started_at::text,
                    r.started_at > now() - make_interval(mins => $1::int * 2) - p.max_runtime
             FROM auth.cleanup_runs r, auth.cleanup_policy p
             WHERE r.status IN ('ok', 'partial', 'failed')
             ORDER BY r.started_at DESC LIMIT 1",
            &[&(every as i32)],
        )
        .await
    {
        Ok(row) => row,
        Err(err) => return Check::error(NAME, &err),
    };
    let Some(row) = row else {
        return Check::warn(
            NAME,
            "no cleanup run recorded yet",
            "expected on a fresh install; CALL auth.run_token_cleanup() to run one now",
        );
    };
    let (status, error, started, fresh): (&str, Option<&str>, &str, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if status == "failed" {
        return Check::fail(
            NAME,
            format!(
                "the last run (started {started}) failed: {}",
                error.unwrap_or("?")
            ),
            "fix the error, then CALL auth.run_token_cleanup() to confirm",
        );
    }
    if !fresh {
        return Check::fail(
            NAME,
            format!("the last run started {started}, more than twice the schedule's interval ago"),
            "the job is not running: check cron.job_run_details and the pg_cron launcher",
        );
    }
    Check::pass(NAME, format!("last run {status}, started {started}"))
}

async fn backlog(client: &Client, warn_above: i64) -> Check {
    const NAME: &str = "backlog";
    let rows = match client
        .query(
            "SELECT kind, due_rows, exact FROM auth.cleanup_backlog()",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) => return Check::error(NAME, &err),
    };
    let total: i64 = rows.iter().map(|r| r.get::<_, i64>(1)).sum();
    let about = if rows.iter().all(|r| r.get::<_, bool>(2)) {
        ""
    } else {
        "about "
    };
    let evidence = format!(
        "{about}{total} due rows ({})",
        rows.iter()
            .map(|r| format!("{} {}", r.get::<_, &str>(0), r.get::<_, i64>(1)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if total > warn_above {
        Check::warn(
            NAME,
            evidence,
            format!(
                "over {warn_above}: runs are not keeping up; raise max_runtime or run more often, and check for 'partial' runs"
            ),
        )
    } else {
        Check::pass(NAME, evidence)
    }
}

async fn self_test(client: &Client) -> Check {
    const NAME: &str = "self-test";
    let rows = match client
        .query(
            "SELECT check_name, passed, expected, actual FROM auth.self_test()",
            &[],
        )
        .await
    {
        Ok(rows) => rows,
        Err(err) => return Check::error(NAME, &err),
    };
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.get::<_, bool>(1))
        .map(|r| {
            format!(
                "{}: expected {}, got {}",
                r.get::<_, &str>(0),
                r.get::<_, &str>(2),
                r.get::<_, &str>(3)
            )
        })
        .collect();
    if failed.is_empty() {
        Check::pass(
            NAME,
            format!(
                "purge of seeded tokens in every state at a fixed clock: {} assertions held, rolled back",
                rows.len()
            ),
        )
    } else {
        Check::fail(
            NAME,
            failed.join("; "),
            "the purge is broken: re-run token-janitor migrate to restore auth.purge_refresh_tokens, and stop the job until verify passes",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::schedule_minutes;

    #[test]
    fn schedule_intervals() {
        assert_eq!(schedule_minutes("* * * * *"), 1);
        assert_eq!(schedule_minutes("*/5 * * * *"), 5);
        assert_eq!(schedule_minutes("17 * * * *"), 60);
        assert_eq!(schedule_minutes("0 */6 * * *"), 360);
        assert_eq!(schedule_minutes("30 3 * * *"), 1440);
        assert_eq!(schedule_minutes("0 0 * * 1"), 7 * 1440);
    }
}
