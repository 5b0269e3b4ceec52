//! `migrate`: versioned migrations (refinery), the re-applied definitions in
//! `sql/`, the purge's indexes (built CONCURRENTLY) and the pg_cron job, all
//! under one advisory lock so that several instances can deploy at once.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::db;
use crate::history;
use crate::operator::{Error, Result};
use crate::owner::{self, Declared, Deployment, Roles, ident};
use crate::schedule::{self, ScheduleChoice};
use crate::schema::Schema;

/// The versioned migrations of `migrations/`, embedded at build time.
mod embedded {
    refinery::embed_migrations!("migrations");
}
use embedded::migrations;

/// The session advisory lock migrate holds while it deploys: the tag `tjmg`
/// read as a big-endian integer, so `to_hex(objid)` in pg_locks spells it.
/// The cleanup and the token functions take row locks no other role can take
/// (sql/00_locks.sql); a deploy needs a lock that outlives its transactions
/// (it builds indexes CONCURRENTLY), which only an advisory lock does, so a
/// role that holds this key delays a deploy (which then fails naming the
/// key), never the cleanup or a login.
pub const DEPLOY_LOCK: i64 = 0x746a_6d67;

/// A versioned migration this binary carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbeddedMigration {
    /// The `n` of `V{n}__name.sql`.
    pub version: i64,
    /// The `name` of `V{n}__name.sql`.
    pub name: String,
    /// refinery's checksum of name, version and SQL.
    pub checksum: u64,
}

/// The versioned migrations of `migrations/` for `schema`: the embedded
/// SQL rewritten by [`Schema::sql`] (unchanged for `auth`, so an install in
/// `auth` keeps its checksums; another schema's are its own, the same on
/// every migrate and verify).
fn runner(schema: &Schema) -> refinery::Runner {
    let mut rewritten: Vec<refinery::Migration> = migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| {
            refinery::Migration::unapplied(
                &format!("V{}__{}", m.version(), m.name()),
                &schema.sql(m.sql().unwrap_or_default()),
            )
            .expect("an embedded migration's name parses again")
        })
        .collect();
    // Embedded in file-name order (V10 before V2): versions order them.
    rewritten.sort_by_key(refinery::Migration::version);
    refinery::Runner::new(&rewritten)
}

/// The versioned migrations embedded in this binary, in order, as they are
/// applied in `schema`.
pub fn embedded_migrations(schema: &Schema) -> Vec<EmbeddedMigration> {
    runner(schema)
        .get_migrations()
        .iter()
        .map(|m| EmbeddedMigration {
            version: i64::from(m.version()),
            name: m.name().to_string(),
            checksum: m.checksum(),
        })
        .collect()
}

/// Definitions re-applied on every migrate, in order (`CREATE OR REPLACE`):
/// one file per concern (docs/design.md §4).
const DEFINITIONS: &[(&str, &str)] = &[
    ("sql/00_locks.sql", include_str!("../sql/00_locks.sql")),
    (
        "sql/05_purge_targets.sql",
        include_str!("../sql/05_purge_targets.sql"),
    ),
    (
        "sql/10_lifecycle.sql",
        include_str!("../sql/10_lifecycle.sql"),
    ),
    ("sql/20_purge.sql", include_str!("../sql/20_purge.sql")),
    (
        "sql/30_cleanup_run.sql",
        include_str!("../sql/30_cleanup_run.sql"),
    ),
    (
        "sql/40_observability.sql",
        include_str!("../sql/40_observability.sql"),
    ),
    ("sql/50_access.sql", include_str!("../sql/50_access.sql")),
];

/// Routines earlier releases defined in `sql/` under names this one no
/// longer uses (internal routines took a leading `_`): still
/// token-janitor's, so that an install from before the owner role passes
/// them to the owner role, and the re-applied definitions replace them.
const RETIRED_ROUTINES: &[&str] = &[
    "check_token_hash",
    "check_optional_length",
    "check_ttl",
    "check_now",
    "check_revoke_reason",
    "purge_statement",
    "purge_start",
    "purge_cutoff",
    "purge_delete",
    "purge_kind",
    "purge_sessions",
    "purge_batch",
    "start_run",
    "record_skipped_run",
    "run_batch",
    "run_pace",
    "finish_run",
    "prune_cleanup_history",
    "apply_grants",
    "_purge_security_events",
    "_lock_key",
];

/// What migrate creates in its schema, by name: its record (see [`owner`]).
/// Names are relative to the schema, so the record is read from the SQL as
/// written (for `auth`) whatever the schema.
fn record() -> Vec<Declared> {
    let mut migrations: Vec<(i64, String)> = migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| {
            (
                i64::from(m.version()),
                m.sql().unwrap_or_default().to_string(),
            )
        })
        .collect();
    migrations.sort_by_key(|(version, _)| *version);
    let mut definitions: Vec<&str> = DEFINITIONS.iter().map(|(_, sql)| *sql).collect();
    definitions.push(INDEXES);
    owner::record(
        &migrations,
        &definitions,
        &[history::TABLE_NAME],
        RETIRED_ROUTINES,
    )
}

/// The purge's indexes, one `CREATE INDEX CONCURRENTLY` statement each.
const INDEXES: &str = include_str!("../sql/indexes.sql");

/// Indexes of earlier releases that `sql/indexes.sql` replaced, dropped
/// CONCURRENTLY once their replacements are built: the token kinds' indexes
/// on the timestamp alone, before the primary key joined their keys; the
/// session sweep's index on refresh_expires_at, before expiry_floor (V12);
/// the expired kind's index of every row, before rows that rotate in place
/// left it.
const RETIRED_INDEXES: &[&str] = &[
    "refresh_tokens_expired_purge_idx",
    "refresh_tokens_expires_at_idx",
    "refresh_tokens_rotated_idx",
    "refresh_tokens_revoked_idx",
    "sessions_refresh_expires_at_idx",
];

/// Sessions whose expiry floor one statement of [`settle_expiry_floors`]
/// sets: one short transaction, so a rotation waits for it a few
/// milliseconds at most.
const FLOOR_BATCH: i64 = 5_000;

/// What `migrate` should do beyond the schema.
///
/// ```
/// use std::time::Duration;
/// use token_janitor::Schema;
/// use token_janitor::operator::{MigrateOptions, ScheduleChoice};
///
/// # fn options() -> token_janitor::Result<MigrateOptions> {
/// // Beside Supabase's auth schema, run hourly, owned by a role of the team's.
/// let options = MigrateOptions {
///     schema: Schema::new("tokens")?,
///     schedule: ScheduleChoice::Set("0 * * * *".into()),
///     owner_role: Some("tokens_owner".into()),
///     lock_wait: Duration::from_secs(60),
///     ..MigrateOptions::default()
/// };
/// assert_eq!(options.app_role(), "tokens_app");
/// # Ok(options)
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The schema everything goes into (`--schema`). Default: `auth`.
    pub schema: Schema,
    /// The pg_cron schedule of this database's cleanup job. Default:
    /// [`ScheduleChoice::KeepOrDefault`]: a migrate from an application's
    /// start-up keeps the schedule an operator set, and a fresh install gets
    /// `*/5 * * * *` (every five minutes, UTC). [`ScheduleChoice::Set`] replaces it
    /// (`--schedule`); [`ScheduleChoice::Off`] skips everything
    /// pg_cron-related (`--no-schedule`). Migrate never changes the policy
    /// (`auth.cleanup_policy`) of an existing install.
    pub schedule: ScheduleChoice,
    /// How long to wait for another migrate's lock. Default: 15 minutes, since
    /// the other may be building an index on a large table.
    pub lock_wait: Duration,
    /// The application role, created NOLOGIN when missing. Default
    /// (`None`): `token_janitor_app` in schema `auth`, `NAME_app` in
    /// schema `NAME`.
    pub app_role: Option<String>,
    /// The monitoring role, created NOLOGIN when missing. Default (`None`):
    /// `token_janitor_monitor` in schema `auth`, `NAME_monitor` in schema
    /// `NAME`.
    pub monitor_role: Option<String>,
    /// The role that owns the schema's token-janitor objects, and runs the
    /// pg_cron job; never a superuser. Created when missing, LOGIN when the
    /// job runs as it (pg_cron connects as the job's role). Default (`None`):
    /// when migrate runs as a superuser, `token_janitor_owner` in
    /// schema `auth` and `NAME_owner` in schema `NAME`; else the connected
    /// role itself.
    pub owner_role: Option<String>,
    /// How to reach pg_cron's database (cron.database_name) when it is not
    /// this one; the job is then scheduled there with
    /// `cron.schedule_in_database` to run here. Default: `None`, and migrate
    /// refuses when pg_cron lives elsewhere.
    pub cron_database: Option<schedule::CronDatabase>,
}

impl MigrateOptions {
    /// The application role: [`MigrateOptions::app_role`] or the schema's default.
    ///
    /// ```
    /// use token_janitor::operator::MigrateOptions;
    ///
    /// // The role to grant to the application's login role after a migrate.
    /// let grant = format!("GRANT {} TO api_login", MigrateOptions::default().app_role());
    /// assert_eq!(grant, "GRANT token_janitor_app TO api_login");
    /// ```
    pub fn app_role(&self) -> String {
        self.app_role
            .clone()
            .unwrap_or_else(|| self.schema.default_role("app"))
    }

    /// The monitoring role: [`MigrateOptions::monitor_role`] or the schema's default.
    ///
    /// ```
    /// use token_janitor::operator::MigrateOptions;
    ///
    /// assert_eq!(MigrateOptions::default().monitor_role(), "token_janitor_monitor");
    /// ```
    pub fn monitor_role(&self) -> String {
        self.monitor_role
            .clone()
            .unwrap_or_else(|| self.schema.default_role("monitor"))
    }
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            schema: Schema::default(),
            schedule: ScheduleChoice::KeepOrDefault,
            lock_wait: Duration::from_secs(15 * 60),
            app_role: None,
            monitor_role: None,
            owner_role: None,
            cron_database: None,
        }
    }
}

/// What a migrate run did.
///
/// ```
/// use token_janitor::operator::{self, MigrateOptions};
///
/// # async fn deploy(client: &mut token_janitor::tokio_postgres::Client) -> operator::Result<()> {
/// let report = operator::migrate(client, &MigrateOptions::default()).await?;
/// for version in &report.applied {
///     println!("applied {version}");
/// }
/// match (&report.job_name, &report.schedule) {
///     (Some(job), Some(cron)) => println!("{job} runs on '{cron}' as {}", report.owner),
///     _ => println!("no schedule: call the cleanup from your own scheduler"),
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versioned migrations applied by this run, as `V{n}__{name}`.
    pub applied: Vec<String>,
    /// Indexes this run built (missing before).
    pub indexes_built: Vec<String>,
    /// Indexes this run dropped and rebuilt: INVALID leftovers of
    /// interrupted builds, and indexes of an earlier build's definition.
    pub indexes_rebuilt: Vec<String>,
    /// Indexes of an earlier release that this run dropped (replaced), and
    /// the `<name>_next` leftover of an interrupted rebuild.
    pub indexes_retired: Vec<String>,
    /// Sessions written before V12 whose expiry floor this run set to
    /// their expiry, so that the session sweep finds them by its index.
    pub expiry_floors_set: u64,
    /// The pg_cron job id, when the schedule was installed.
    pub job_id: Option<i64>,
    /// The job's name (`token-janitor cleanup: DATABASE.SCHEMA`, one per
    /// database and schema on a server), when the schedule was installed.
    pub job_name: Option<String>,
    /// The job's schedule (UTC): the one set, kept or defaulted.
    pub schedule: Option<String>,
    /// The owner role: it owns the schema's token-janitor objects and the
    /// job runs as it.
    pub owner: String,
}

/// Applies everything, holding the deploy lock (an advisory lock, key
/// `0x746a6d67`) for the duration. Safe to
/// run on every deploy and from several instances at once. pg_cron, the
/// roles and every object in migrate's way are checked before anything is
/// changed, so a database that cannot take the install is left as it was.
/// It runs with its own search_path (`public`, behind the implicit
/// `pg_catalog`), whatever the database or the role sets, and puts the
/// session's back when it ends.
///
/// # Errors
/// The pg_cron errors (`Error::PgCron…`, [`Error::CronDatabase`],
/// [`Error::JobNotAsScheduled`]), [`Error::InvalidSchedule`],
/// [`Error::Conflict`] (nothing changed), [`Error::LockTimeout`],
/// [`Error::Migration`] (naming the migration; the ones before it stay
/// applied), or [`crate::Error::Db`] in [`Error::Runtime`] naming the
/// file, object or index.
///
/// ```no_run
/// use token_janitor::DatabaseUrl;
/// use token_janitor::operator::{self, MigrateOptions};
///
/// # async fn start() -> operator::Result<()> {
/// // At start-up, before serving: safe from every instance at once.
/// let mut client = DatabaseUrl::parse("postgres://deployer@localhost/app")?.connect().await?;
/// match operator::migrate(&mut client, &MigrateOptions::default()).await {
///     Ok(report) => println!("{} migration(s) applied", report.applied.len()),
///     // Someone else's object in the way: nothing was changed.
///     Err(operator::Error::Conflict(objects)) => eprintln!("fix first: {}", objects.join("; ")),
///     Err(other) => return Err(other),
/// }
/// # Ok(())
/// # }
/// ```
pub async fn migrate(client: &mut Client, options: &MigrateOptions) -> Result<MigrateReport> {
    if let ScheduleChoice::Set(cron) = &options.schedule {
        schedule::check_schedule(cron)?;
    }
    let search_path = crate::db::pin_search_path(client).await?;
    acquire_lock(client, options.lock_wait).await?;
    let result = migrate_locked(client, options).await;
    let unlock = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&DEPLOY_LOCK])
        .await
        .map_err(db("releasing the deploy lock"));
    let restore = crate::db::restore_search_path(client, &search_path).await;
    let report = result?;
    unlock?;
    restore?;
    Ok(report)
}

/// Polls for the session lock rather than blocking on it: a session waiting
/// in `pg_advisory_lock` holds a snapshot, and `CREATE INDEX CONCURRENTLY` in
/// the lock holder would wait for that snapshot, a deadlock.
async fn acquire_lock(client: &Client, wait: Duration) -> Result<()> {
    let started = Instant::now();
    let mut announced = false;
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&DEPLOY_LOCK])
            .await
            .map_err(db("taking the deploy lock"))?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(Error::LockTimeout {
                waited_s: wait.as_secs(),
                key: DEPLOY_LOCK,
            });
        }
        if !announced {
            tracing::info!("another migrate holds the deploy lock; waiting for it");
            announced = true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn migrate_locked(client: &mut Client, options: &MigrateOptions) -> Result<MigrateReport> {
    // pg_cron is checked, in its own database when that is another, before
    // anything changes.
    let cron_db = match options.schedule {
        ScheduleChoice::KeepOrDefault | ScheduleChoice::Set(_) => {
            let cron_db =
                schedule::connect_cron_database(client, options.cron_database.as_ref()).await?;
            schedule::check_pg_cron(
                client,
                cron_db.as_ref(),
                &options.schema,
                schedule::CronUse::Schedule,
            )
            .await?;
            cron_db
        }
        ScheduleChoice::Off => None,
    };
    let schema = &options.schema;
    let record = record();
    let (app_role, monitor_role) = (options.app_role(), options.monitor_role());
    let roles = Roles {
        schema,
        owner: options.owner_role.as_deref(),
        app: &app_role,
        monitor: &monitor_role,
        schedule: options.schedule != ScheduleChoice::Off,
    };
    let owner_role = owner::owner_role(client, schema, roles.owner).await?;
    let history = history::read(client, schema, &owner_role).await?;
    let deployment = owner::preflight(client, &roles, &record, &history.versions()).await?;
    owner::ensure_roles(client, &deployment).await?;
    history::prepare(client, schema, &history, &deployment.owner).await?;

    let mut report = MigrateReport {
        owner: deployment.owner.clone(),
        ..MigrateReport::default()
    };
    let applied = runner(schema)
        .set_migration_table_name(history::table(schema))
        .run_async(client)
        .await?;
    report.applied = applied
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    for name in &report.applied {
        tracing::info!(migration = %name, "applied");
    }

    owner::hand_over(client, &deployment, &record, &app_role, &monitor_role).await?;
    apply_definitions(client, options, &deployment, &record).await?;

    for index in index_statements(schema) {
        build_index(client, schema, &index, &mut report).await?;
    }
    report.expiry_floors_set = settle_expiry_floors(client, schema).await?;
    for name in RETIRED_INDEXES {
        retire_index(client, schema, name, &mut report).await?;
    }

    let wanted = match &options.schedule {
        ScheduleChoice::Off => return Ok(report),
        ScheduleChoice::KeepOrDefault => None,
        ScheduleChoice::Set(cron) => Some(cron.as_str()),
    };
    // A superuser schedules the job for the owner role; any other role is
    // the owner and schedules its own.
    let username = (deployment.owner != deployment.deployer).then_some(deployment.owner.as_str());
    let job =
        schedule::install_schedule(client, cron_db.as_ref(), schema, wanted, username).await?;
    report.job_id = Some(job.jobid);
    report.job_name = Some(job.name);
    report.schedule = Some(job.schedule);
    Ok(report)
}

/// Replaces the owner role's functions and procedures in the schema with the
/// ones in `sql/` (rewritten for the schema), as the owner role, in one transaction: dropping them first
/// lets a release change a signature or return type, which `CREATE OR
/// REPLACE` refuses, and callers see the old set or the new one, never a mix.
/// Only routines of token-janitor's record owned by the owner role go
/// (anyone else's in the schema, and the owner role's own under other names, stay
/// with their grants and comments); trigger functions belong to the
/// versioned migrations and stay too. The grants go with them (a dropped function
/// loses its grants) and `auth._apply_grants` sets them again.
async fn apply_definitions(
    client: &mut Client,
    options: &MigrateOptions,
    deployment: &Deployment,
    record: &[Declared],
) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(db("applying sql/ definitions"))?;
    if deployment.owner != deployment.deployer {
        tx.batch_execute(&format!("SET LOCAL ROLE {}", ident(&deployment.owner)))
            .await
            .map_err(db(format!("acting as the owner role {}", deployment.owner)))?;
    }
    let previous = tx
        .query(
            "SELECT pg_catalog.format('DROP %s %s',
                        CASE p.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END,
                        p.oid::pg_catalog.regprocedure)
             FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = $2::text::pg_catalog.regnamespace
               AND p.prokind IN ('f', 'p')
               AND p.prorettype <> 'pg_catalog.trigger'::pg_catalog.regtype
               AND p.proowner = (SELECT o.oid FROM pg_catalog.pg_roles o
                                 WHERE o.rolname = current_user)
               AND p.proname = ANY ($1)",
            &[&owner::routine_names(record), &options.schema.name()],
        )
        .await
        .map_err(db("listing the previous sql/ definitions"))?;
    for drop in previous {
        tx.batch_execute(drop.get(0))
            .await
            .map_err(db("dropping the previous sql/ definitions"))?;
    }
    for (file, sql) in DEFINITIONS {
        tx.batch_execute(&options.schema.sql(sql))
            .await
            .map_err(db(format!("applying {file}")))?;
    }
    tx.execute(
        &*options
            .schema
            .sql("SELECT auth._apply_grants(p_app_role => $1, p_monitor_role => $2)"),
        &[&options.app_role(), &options.monitor_role()],
    )
    .await
    .map_err(db(
        "granting access to the application and monitoring roles",
    ))?;
    Ok(tx.commit().await.map_err(db("applying sql/ definitions"))?)
}

/// One index from `sql/indexes.sql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDefinition {
    /// Index name (in token-janitor's schema).
    pub name: String,
    /// The `CREATE INDEX CONCURRENTLY IF NOT EXISTS …` statement.
    pub statement: String,
}

/// The purge's indexes as `sql/indexes.sql` defines them, in `schema`.
pub fn index_statements(schema: &Schema) -> Vec<IndexDefinition> {
    let indexes = schema.sql(INDEXES);
    let code: Vec<&str> = indexes
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"))
        .collect();
    code.join("\n")
        .split(';')
        .filter(|statement| !statement.trim().is_empty())
        .map(|statement| {
            let name = statement
                .split("IF NOT EXISTS")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .expect("every statement in sql/indexes.sql is CREATE INDEX CONCURRENTLY IF NOT EXISTS <name>")
                .to_string();
            IndexDefinition {
                name,
                statement: statement.trim().to_string(),
            }
        })
        .collect()
}

/// Builds one index CONCURRENTLY (its own statement, outside any transaction),
/// first dropping an INVALID leftover of an interrupted build. An index of
/// that name whose definition is not `sql/indexes.sql`'s (an earlier
/// build's) is rebuilt without a moment in which the purge lacks it: the new
/// one is built as `<name>_next`, the old one dropped, the new one renamed
/// (all three take no lock that stops reads or writes of the table). A
/// `<name>_next` left by an interrupted rebuild is dropped first.
async fn build_index(
    client: &Client,
    schema: &Schema,
    index: &IndexDefinition,
    report: &mut MigrateReport,
) -> Result<()> {
    let context = || format!("building index {schema}.{}", index.name);
    let next = format!("{}_next", index.name);
    retire_index(client, schema, &next, report).await?;
    let existing = client
        .query_opt(
            "SELECT i.indisvalid FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $2 AND c.relname = $1",
            &[&index.name, &schema.name()],
        )
        .await
        .map_err(db(context()))?
        .map(|row| row.get::<_, bool>(0));
    match existing {
        Some(true) if same_definition(client, schema, index).await => return Ok(()),
        Some(true) => {
            tracing::warn!(index = %index.name, "rebuilding an index whose definition is an earlier build's");
            let statement = index.statement.replacen(
                &format!("IF NOT EXISTS {}", index.name),
                &format!("IF NOT EXISTS {next}"),
                1,
            );
            // One statement each: CONCURRENTLY refuses a transaction block,
            // which several statements in one query string make.
            for step in [
                statement,
                format!("DROP INDEX CONCURRENTLY {schema}.\"{}\"", index.name),
                format!(
                    "ALTER INDEX {schema}.\"{next}\" RENAME TO \"{}\"",
                    index.name
                ),
            ] {
                client.batch_execute(&step).await.map_err(db(context()))?;
            }
            report.indexes_rebuilt.push(index.name.clone());
            return Ok(());
        }
        Some(false) => {
            tracing::warn!(index = %index.name, "dropping INVALID index left by an interrupted build");
            client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS {schema}.\"{}\"",
                    index.name
                ))
                .await
                .map_err(db(context()))?;
            report.indexes_rebuilt.push(index.name.clone());
        }
        None => report.indexes_built.push(index.name.clone()),
    }
    tracing::info!(index = %index.name, "building index concurrently");
    client
        .batch_execute(&index.statement)
        .await
        .map_err(db(context()))?;
    Ok(())
}

/// Whether the valid index `index.name` has the definition `index.statement`
/// gives: the statement's index is built on an empty table of the same
/// columns in pg_temp, in a transaction that is rolled back, and the two
/// are compared as PostgreSQL prints them from ` USING ` on (method,
/// columns, predicate). When that cannot be done (a role without the
/// TEMPORARY privilege), the index is taken as it is, with a warning.
async fn same_definition(client: &Client, schema: &Schema, index: &IndexDefinition) -> bool {
    let (table, shape) = index
        .statement
        .split_once(" ON ")
        .and_then(|(_, on)| on.trim_start().split_once(' '))
        .expect("every statement in sql/indexes.sql is CREATE INDEX … ON <table> (…)");
    let compared = async {
        client
            .batch_execute(&format!(
                "BEGIN;
                 CREATE TEMP TABLE tj_index_shape (LIKE {table}) ON COMMIT DROP;
                 CREATE INDEX tj_index_shape_idx ON pg_temp.tj_index_shape {shape}"
            ))
            .await?;
        client
            .query_one(
                "SELECT substring(pg_catalog.pg_get_indexdef('pg_temp.tj_index_shape_idx'::pg_catalog.regclass)
                                  FROM ' USING .*$')
                        IS NOT DISTINCT FROM substring(pg_catalog.pg_get_indexdef(c.oid) FROM ' USING .*$')
                 FROM pg_catalog.pg_class c
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $2 AND c.relname = $1",
                &[&index.name, &schema.name()],
            )
            .await
            .map(|row| row.get::<_, bool>(0))
    }
    .await;
    let rolled_back = client.batch_execute("ROLLBACK").await;
    match (compared, rolled_back) {
        (Ok(same), Ok(())) => same,
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(index = %index.name, error = %e, "could not compare the index with its definition; kept as it is");
            true
        }
    }
}

/// Sets the expiry floor of the sessions written before V12 (or without
/// the column: '-infinity', which every sweep reads) to their expiry, in
/// statements of [`FLOOR_BATCH`] rows, each its own transaction, until none
/// is left but those other transactions hold (their rotation sets the
/// floor itself). A run cut short leaves the rest to the next migrate; the
/// sweep is right either way, only slower.
async fn settle_expiry_floors(client: &Client, schema: &Schema) -> Result<u64> {
    let statement = schema.sql(
        "UPDATE auth.sessions s SET expiry_floor = s.refresh_expires_at
         WHERE s.id IN (SELECT u.id FROM auth.sessions u
                        WHERE u.expiry_floor = '-infinity' AND u.refresh_expires_at > '-infinity'
                        LIMIT $1 FOR UPDATE SKIP LOCKED)",
    );
    let mut set = 0;
    loop {
        let rows = client
            .execute(&*statement, &[&FLOOR_BATCH])
            .await
            .map_err(db(format!(
                "setting the expiry floor of {schema}.sessions written before V12 \
                 ({set} set so far; run migrate again to go on)"
            )))?;
        set += rows;
        if rows == 0 {
            break;
        }
    }
    if set > 0 {
        tracing::info!(
            sessions = set,
            "set the expiry floor of sessions written before V12"
        );
    }
    Ok(set)
}

/// Drops index `name` of an earlier release CONCURRENTLY (its own statement,
/// outside any transaction) when it exists, so token traffic never waits.
async fn retire_index(
    client: &Client,
    schema: &Schema,
    name: &str,
    report: &mut MigrateReport,
) -> Result<()> {
    let context = || format!("dropping the replaced index {schema}.{name}");
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $2 AND c.relname = $1 AND c.relkind = 'i'",
            &[&name, &schema.name()],
        )
        .await
        .map_err(db(context()))?
        .is_some();
    if exists {
        tracing::info!(index = %name, "dropping replaced index concurrently");
        client
            .batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS {schema}.\"{name}\""
            ))
            .await
            .map_err(db(context()))?;
        report.indexes_retired.push(name.to_string());
    }
    Ok(())
}
