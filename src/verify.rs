//! `verify`: proves on a live database that the cleanup is installed,
//! scheduled and working, without changing any data. One [`Check`] per
//! property, each with its evidence and, when it fails, the remedy.

use std::borrow::Borrow;

use serde::Serialize;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

use crate::db::DatabaseUrl;
use crate::error::describe;
use crate::history;
use crate::migrate::{embedded_migrations, index_statements};
use crate::schedule::{self, CronDatabase, CronUse, JobInfo, PgCron};
use crate::schema::Schema;

/// How a check came out.
///
/// ```
/// use token_janitor::operator::{Outcome, Report};
///
/// fn failed(report: &Report) -> Vec<&str> {
///     report.checks.iter().filter(|c| c.outcome == Outcome::Fail).map(|c| c.name).collect()
/// }
/// # assert!(failed(&Report { ok: true, checks: vec![] }).is_empty());
/// ```
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
///
/// ```
/// use token_janitor::operator::{Outcome, Report};
///
/// fn alerts(report: &Report) -> Vec<String> {
///     report
///         .checks
///         .iter()
///         .filter(|check| check.outcome != Outcome::Pass)
///         .map(|check| format!("{}: {} ({})", check.name, check.evidence, check.remedy.as_deref().unwrap_or("-")))
///         .collect()
/// }
/// # assert!(alerts(&Report { ok: true, checks: vec![] }).is_empty());
/// ```
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

/// What a check that queries found, or the error that kept it from looking.
type Found = Result<Verdict, tokio_postgres::Error>;

/// What one check found, before [`run_checks`] names it.
struct Verdict {
    outcome: Outcome,
    evidence: String,
    remedy: Option<String>,
}

impl Verdict {
    fn pass(evidence: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Pass,
            evidence: evidence.into(),
            remedy: None,
        }
    }

    fn warn(evidence: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Warn,
            evidence: evidence.into(),
            remedy: Some(remedy.into()),
        }
    }

    fn fail(evidence: impl Into<String>, remedy: impl Into<String>) -> Self {
        Self {
            outcome: Outcome::Fail,
            evidence: evidence.into(),
            remedy: Some(remedy.into()),
        }
    }
}

impl Check {
    fn new(name: &'static str, verdict: Verdict) -> Self {
        let Verdict {
            outcome,
            evidence,
            remedy,
        } = verdict;
        Self {
            name,
            outcome,
            evidence,
            remedy,
        }
    }

    /// Names what a check found; when its query failed, the check fails
    /// saying which query and why (privileges, a missing object).
    fn named(
        name: &'static str,
        found: Result<Verdict, impl Borrow<tokio_postgres::Error>>,
    ) -> Self {
        match found {
            Ok(verdict) => Self::new(name, verdict),
            Err(err) => Self::new(
                name,
                Verdict::fail(
                    format!("query failed: {}", describe(err.borrow())),
                    "grant this role read access to token-janitor's schema and cron (or run \
                     verify as the migrating role), and run token-janitor migrate if objects are \
                     missing (VerifyOptions::schema names the schema when it is not auth)",
                ),
            ),
        }
    }
}

/// All checks of one verify run.
///
/// ```
/// use token_janitor::DatabaseUrl;
/// use token_janitor::operator::{self, VerifyOptions};
///
/// # async fn monitor() -> operator::Result<()> {
/// let url = DatabaseUrl::parse("postgres://monitor@localhost/app")?;
/// let report = operator::verify(&url, &VerifyOptions::default()).await;
/// println!("{report}"); // PASS/WARN/FAIL lines, as `token-janitor verify` prints
/// if !report.ok {
///     std::process::exit(1);
/// }
/// # Ok(())
/// # }
/// ```
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
///
/// ```
/// use token_janitor::Schema;
/// use token_janitor::operator::VerifyOptions;
///
/// # fn options() -> token_janitor::Result<VerifyOptions> {
/// Ok(VerifyOptions {
///     schema: Schema::new("tokens")?,
///     schedule: Some("0 * * * *".into()), // as migrate was given it
///     backlog_warn: 5_000_000,
///     ..VerifyOptions::default()
/// })
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    /// The schema token-janitor was installed in (`--schema`). Default: `auth`.
    pub schema: Schema,
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
            schema: Schema::default(),
            schedule: Some(crate::schedule::DEFAULT_SCHEDULE.to_string()),
            backlog_warn: 1_000_000,
            cron_database: None,
        }
    }
}

/// Runs every check against `url`. Never changes data: the one check that
/// writes (the self-test) does so in a subtransaction that is rolled back.
///
/// ```
/// use token_janitor::DatabaseUrl;
/// use token_janitor::operator::{self, VerifyOptions};
///
/// # async fn ci() -> token_janitor::Result<()> {
/// let url = DatabaseUrl::parse("postgres://deployer@localhost/app")?;
/// let report = operator::verify(&url, &VerifyOptions::default()).await;
/// assert!(report.ok, "{report}");
/// # Ok(())
/// # }
/// ```
pub async fn verify(url: &DatabaseUrl, options: &VerifyOptions) -> Report {
    let mut checks = Vec::new();
    match url.connect().await {
        Ok(client) => {
            checks.push(Check::new(
                "connection",
                Verdict::pass(format!("connected to {url}")),
            ));
            run_checks(&client, options, &mut checks).await;
        }
        Err(err) => checks.push(Check::new(
            "connection",
            Verdict::fail(err.to_string(), "fix the database URL or start the server"),
        )),
    }
    let ok = checks.iter().all(|c| c.outcome != Outcome::Fail);
    Report { ok, checks }
}

async fn run_checks(client: &Client, options: &VerifyOptions, checks: &mut Vec<Check>) {
    let schema = &options.schema;
    checks.push(Check::named("server", server_version(client).await));
    let history = Check::named("migrations", migrations(client, schema).await);
    let installed = history.outcome != Outcome::Fail;
    checks.push(history);
    if !installed {
        return;
    }
    checks.push(Check::named("owner", owner(client, schema).await));
    checks.push(Check::named("indexes", indexes(client, schema).await));
    checks.push(Check::named("plans", plans(client, schema).await));
    match &options.schedule {
        Some(schedule) => {
            match schedule::connect_cron_database(client, options.cron_database.as_ref()).await {
                Ok(cron_db) => {
                    let cron =
                        schedule::check_pg_cron(client, cron_db.as_ref(), schema, CronUse::Read);
                    checks.push(Check::new("pg_cron", pg_cron(cron.await)));
                    let found = schedule::find_job(client, cron_db.as_ref(), schema).await;
                    let found = found.as_ref().map(Option::as_ref);
                    checks.push(Check::named("job", found.map(|j| job(j, schedule, schema))));
                    checks.push(Check::named(
                        "last-job-run",
                        found.map(|j| last_job_run(j, schema)),
                    ));
                }
                Err(err) => checks.push(Check::new("pg_cron", pg_cron(Err(err)))),
            }
        }
        None => checks.push(Check::new(
            "schedule",
            Verdict::warn(
                "not checked (no schedule: VerifyOptions::schedule is None)",
                format!("make sure your own scheduler runs {}", schema.job_command()),
            ),
        )),
    }
    checks.push(Check::named(
        "unfinished",
        unfinished_runs(client, schema).await,
    ));
    let recent = recent_run(client, schema, options.schedule.as_deref()).await;
    checks.push(Check::named("recent-run", recent));
    checks.push(Check::named(
        "backlog",
        backlog(client, schema, options.backlog_warn).await,
    ));
    checks.push(Check::named("self-test", self_test(client, schema).await));
}

async fn server_version(client: &Client) -> Found {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int, current_setting('server_version')",
            &[],
        )
        .await?;
    let (num, text): (i32, String) = (row.get(0), row.get(1));
    Ok(if num >= 130_000 {
        Verdict::pass(format!("PostgreSQL {text}"))
    } else {
        Verdict::fail(
            format!("PostgreSQL {text}"),
            "token-janitor needs PostgreSQL 13 or later (tested on 15)",
        )
    })
}

async fn migrations(client: &Client, schema: &Schema) -> Found {
    let table = history::table(schema);
    let rows = match client
        .query(
            &format!(
                "SELECT version::pg_catalog.int8, name::pg_catalog.text, checksum::pg_catalog.text
                 FROM {table} ORDER BY version"
            ),
            &[],
        )
        .await
    {
        Err(err)
            if err.code().is_some_and(|code| {
                [SqlState::UNDEFINED_TABLE, SqlState::INVALID_SCHEMA_NAME].contains(code)
            }) =>
        {
            let legacy: bool = client
                .query_one(
                    "SELECT pg_catalog.to_regclass($1) IS NOT NULL",
                    &[&history::LEGACY_TABLE],
                )
                .await?
                .get(0);
            return Ok(if legacy && schema.is_default() {
                Verdict::fail(
                    format!(
                        "no migration history in {table}; {} may hold an earlier release's (not \
                         read: it is in a schema the database owner controls)",
                        history::LEGACY_TABLE
                    ),
                    "run token-janitor migrate: it moves token-janitor's rows to its own schema",
                )
            } else {
                Verdict::fail(
                    format!("no migration history ({table}): the schema is not installed here"),
                    format!(
                        "run token-janitor migrate against this database (with MigrateOptions::schema \
                         {schema} if that is where you want it), or verify with the \
                         VerifyOptions::schema token-janitor was installed in"
                    ),
                )
            });
        }
        rows => rows?,
    };
    let embedded = embedded_migrations(schema);
    for m in &embedded {
        match rows.iter().find(|r| r.get::<_, i64>(0) == m.version) {
            None => {
                return Ok(Verdict::fail(
                    format!("V{}__{} is not applied", m.version, m.name),
                    "run token-janitor migrate",
                ));
            }
            Some(row) if row.get::<_, String>(2) != m.checksum.to_string() => {
                return Ok(Verdict::fail(
                    format!(
                        "applied migration V{}__{} differs from this binary's (checksum {} != {})",
                        m.version,
                        m.name,
                        row.get::<_, String>(2),
                        m.checksum
                    ),
                    "someone changed a released migration: restore it, or deploy the binary that matches this database",
                ));
            }
            Some(_) => {}
        }
    }
    let newest = embedded.last().map(|m| m.version).unwrap_or(0);
    if let Some(row) = rows.iter().find(|r| r.get::<_, i64>(0) > newest) {
        return Ok(Verdict::warn(
            format!(
                "V{}__{} is applied but unknown to this binary",
                row.get::<_, i64>(0),
                row.get::<_, String>(1)
            ),
            "this binary is older than the database schema: upgrade token-janitor",
        ));
    }
    Ok(Verdict::pass(format!(
        "{} applied, none divergent",
        embedded.len()
    )))
}

/// DESIGN.md §6 invariant 7: token-janitor's objects belong to a role that
/// is not a superuser, so no SECURITY DEFINER routine in auth runs as one.
async fn owner(client: &Client, schema: &Schema) -> Found {
    let row = client
        .query_one(
            &*schema.sql("SELECT o.rolname::text, o.rolsuper,
                    (SELECT count(*) FROM pg_catalog.pg_proc p
                     WHERE p.pronamespace = 'auth'::regnamespace AND p.prosecdef),
                    (SELECT pg_catalog.string_agg(p.oid::regprocedure::text || ' (' || r.rolname || ')', ', ')
                     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
                     WHERE p.pronamespace = 'auth'::regnamespace AND p.prosecdef AND r.rolsuper)
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles o ON o.oid = c.relowner
             WHERE c.oid = 'auth.cleanup_runs'::regclass"),
            &[],
        )
        .await?;
    let (owner, superuser, definers, superusers): (String, bool, i64, Option<String>) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let remedy = format!(
        "run token-janitor migrate as a superuser: it gives schema {schema}'s token-janitor \
         objects to the owner role (MigrateOptions::owner_role, never a superuser)"
    );
    if superuser {
        return Ok(Verdict::fail(
            format!("the tables belong to role {owner}, a superuser"),
            remedy.clone(),
        ));
    }
    if let Some(superusers) = superusers {
        return Ok(Verdict::fail(
            format!("SECURITY DEFINER routines owned by a superuser: {superusers}"),
            remedy,
        ));
    }
    Ok(Verdict::pass(format!(
        "tables owned by role {owner} (no superuser); none of the {definers} SECURITY \
         DEFINER routines in {schema} belongs to a superuser"
    )))
}

/// The indexes of `sql/indexes.sql` and those the purge targets name (some
/// are built by a versioned migration).
async fn indexes(client: &Client, schema: &Schema) -> Found {
    let mut wanted: Vec<String> = index_statements(schema)
        .into_iter()
        .map(|i| i.name)
        .collect();
    for row in client
        .query(
            &*schema.sql(
                "SELECT DISTINCT i FROM auth.purge_targets() t, unnest(t.indexes) i ORDER BY i",
            ),
            &[],
        )
        .await?
    {
        let name: String = row.get(0);
        if !wanted.contains(&name) {
            wanted.push(name);
        }
    }
    let rows = client
        .query(
            &*schema.sql(
                "SELECT c.relname::text, i.indisvalid AND i.indisready
             FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             WHERE c.relnamespace = 'auth'::regnamespace AND c.relname = ANY ($1)",
            ),
            &[&wanted],
        )
        .await?;
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
        return Ok(Verdict::fail(
            evidence.join("; "),
            "run token-janitor migrate: it builds missing indexes and rebuilds INVALID ones concurrently",
        ));
    }
    Ok(Verdict::pass(format!(
        "{} purge indexes present and valid",
        wanted.len()
    )))
}

async fn plans(client: &Client, schema: &Schema) -> Found {
    let rows = client
        .query(
            &*schema.sql("SELECT kind, step, seq_scan, plan FROM auth.explain_purge()"),
            &[],
        )
        .await?;
    let scanning: Vec<String> = rows
        .iter()
        .filter(|r| r.get::<_, bool>(2))
        .map(|r| format!("{}/{}", r.get::<_, String>(0), r.get::<_, String>(1)))
        .collect();
    Ok(if scanning.is_empty() {
        Verdict::pass(format!(
            "all {} purge queries are bounded (index ranges, or TID ranges of pages)",
            rows.len()
        ))
    } else {
        Verdict::fail(
            format!(
                "unbounded scan (sequential, or a page step that is no TID range) in {}",
                scanning.join(", ")
            ),
            format!(
                "an index is missing or unusable: run token-janitor migrate, then \
                 SELECT plan FROM {schema}.explain_purge() to see the plan"
            ),
        )
    })
}

/// pg_cron as [`schedule::check_pg_cron`] diagnoses it for migrate, less what
/// only scheduling needs.
fn pg_cron(found: crate::operator::Result<PgCron>) -> Verdict {
    match found {
        Ok(PgCron { version, database }) => Verdict::pass(format!(
            "extension {} installed in '{database}', scheduler running for it",
            version.unwrap_or_default()
        )),
        Err(err) => Verdict::fail(
            err.to_string(),
            "do what the message says, or verify without a schedule (VerifyOptions::schedule is None)",
        ),
    }
}

fn job(found: Option<&JobInfo>, schedule: &str, schema: &Schema) -> Verdict {
    let remedy = "run token-janitor migrate (with the MigrateOptions::schedule you want) to re-install the job";
    let command = schema.job_command();
    let Some(job) = found else {
        return Verdict::fail(
            format!(
                "no pg_cron job runs `{command}` in this database (in pg_cron's database a \
                 role sees only its own jobs: verify as the role that ran migrate)"
            ),
            remedy,
        );
    };
    if !job.active {
        return Verdict::fail(
            "job is inactive (cron.job.active = false)",
            format!(
                "SELECT cron.alter_job({}, active => true) in pg_cron's database, or {remedy}",
                job.jobid
            ),
        );
    }
    if job.schedule != schedule {
        return Verdict::fail(
            format!("job runs on '{}', expected '{schedule}'", job.schedule),
            "give verify the schedule that migrate installed (VerifyOptions::schedule), or re-run migrate with it",
        );
    }
    Verdict::pass(format!(
        "'{}' (id {}) active on '{schedule}' (UTC) running `{command}`",
        job.name.as_deref().unwrap_or_default(),
        job.jobid
    ))
}

fn last_job_run(job: Option<&JobInfo>, schema: &Schema) -> Verdict {
    match job.and_then(|j| Some((j.last_status.as_deref()?, j))) {
        None => Verdict::warn(
            "pg_cron has not run the job yet",
            "expected on a fresh install; check again after the first scheduled time",
        ),
        Some(("succeeded", job)) => Verdict::pass(format!(
            "succeeded at {}",
            job.last_start.as_deref().unwrap_or("?")
        )),
        Some((_, job)) => Verdict::fail(
            format!(
                "failed at {}: {}",
                job.last_start.as_deref().unwrap_or("?"),
                job.last_message.as_deref().unwrap_or("(no message)")
            ),
            format!(
                "read the error in {schema}.cleanup_runs and cron.job_run_details, fix it, then \
                 {} to confirm",
                schema.job_command()
            ),
        ),
    }
}

async fn unfinished_runs(client: &Client, schema: &Schema) -> Found {
    let row = client
        .query_one(
            &*schema.sql("SELECT count(*), min(r.started_at)::text
             FROM auth.cleanup_runs r, auth.cleanup_policy p
             WHERE r.status = 'running' AND r.started_at < now() - p.max_runtime - interval '1 minute'"),
            &[],
        )
        .await?;
    let stuck: i64 = row.get(0);
    Ok(if stuck == 0 {
        Verdict::pass("no run left unfinished past max_runtime")
    } else {
        Verdict::fail(
            format!(
                "{stuck} run(s) still 'running' past max_runtime, the oldest from {}",
                row.get::<_, Option<&str>>(1).unwrap_or("?")
            ),
            "a run was killed or is stuck on a lock: look for it in pg_stat_activity; the next run marks killed runs failed",
        )
    })
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

async fn recent_run(client: &Client, schema: &Schema, schedule: Option<&str>) -> Found {
    let every = schedule.map_or(24 * 60, schedule_minutes);
    let row = client
        .query_opt(
            &*schema.sql(
                "SELECT r.status, r.error, r.started_at::text,
                    r.started_at > now() - make_interval(mins => $1::int * 2) - p.max_runtime
             FROM auth.cleanup_runs r, auth.cleanup_policy p
             WHERE r.status IN ('ok', 'partial', 'failed')
             ORDER BY r.started_at DESC LIMIT 1",
            ),
            &[&(every as i32)],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Verdict::warn(
            "no cleanup run recorded yet",
            format!(
                "expected on a fresh install; {} to run one now",
                schema.job_command()
            ),
        ));
    };
    let (status, error, started, fresh): (&str, Option<&str>, &str, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    if status == "failed" {
        return Ok(Verdict::fail(
            format!(
                "the last run (started {started}) failed: {}",
                error.unwrap_or("?")
            ),
            format!("fix the error, then {} to confirm", schema.job_command()),
        ));
    }
    if !fresh {
        return Ok(Verdict::fail(
            format!("the last run started {started}, more than twice the schedule's interval ago"),
            "the job is not running: check cron.job_run_details and the pg_cron launcher",
        ));
    }
    Ok(Verdict::pass(format!(
        "last run {status}, started {started}"
    )))
}

async fn backlog(client: &Client, schema: &Schema, warn_above: i64) -> Found {
    let rows = client
        .query(
            &*schema.sql("SELECT kind, due_rows, exact FROM auth.cleanup_backlog()"),
            &[],
        )
        .await?;
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
    Ok(if total > warn_above {
        Verdict::warn(
            evidence,
            format!(
                "over {warn_above}: runs are not keeping up; raise max_runtime or run more often, and check for 'partial' runs"
            ),
        )
    } else {
        Verdict::pass(evidence)
    })
}

async fn self_test(client: &Client, schema: &Schema) -> Found {
    let rows = client
        .query(
            &*schema.sql("SELECT check_name, passed, expected, actual FROM auth.self_test()"),
            &[],
        )
        .await?;
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
    Ok(if failed.is_empty() {
        Verdict::pass(format!(
            "purge of seeded tokens in every state at a fixed clock: {} assertions held, rolled back",
            rows.len()
        ))
    } else {
        Verdict::fail(
            failed.join("; "),
            format!(
                "the purge is broken: re-run token-janitor migrate to restore \
                 {schema}.purge_refresh_tokens, and stop the job until verify passes"
            ),
        )
    })
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
