//! `migrate`: versioned migrations (refinery), the re-applied definitions in
//! `sql/`, the purge's indexes (built CONCURRENTLY) and the pg_cron job, all
//! under one advisory lock so that several instances can deploy at once.

use std::time::{Duration, Instant};

use tokio_postgres::Client;

use crate::error::{Error, Result, db};
use crate::schedule;

refinery::embed_migrations!("migrations");

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

/// The versioned migrations embedded in this binary, in order.
pub fn embedded_migrations() -> Vec<EmbeddedMigration> {
    migrations::runner()
        .get_migrations()
        .iter()
        .map(|m| EmbeddedMigration {
            version: i64::from(m.version()),
            name: m.name().to_string(),
            checksum: m.checksum(),
        })
        .collect()
}

/// Advisory lock key that serialises concurrent deploys ("tjmg").
pub const MIGRATE_LOCK_KEY: i64 = 0x746a_6d67;

/// Definitions re-applied on every migrate, in order (`CREATE OR REPLACE`).
const DEFINITIONS: &[(&str, &str)] = &[
    (
        "sql/10_lifecycle.sql",
        include_str!("../sql/10_lifecycle.sql"),
    ),
    ("sql/20_cleanup.sql", include_str!("../sql/20_cleanup.sql")),
    ("sql/30_access.sql", include_str!("../sql/30_access.sql")),
];

/// Default name of the role applications use (EXECUTE on the lifecycle
/// functions only).
pub const DEFAULT_APP_ROLE: &str = "token_janitor_app";
/// Default name of the read-only role verify and status can use.
pub const DEFAULT_MONITOR_ROLE: &str = "token_janitor_monitor";

/// The purge's indexes, one `CREATE INDEX CONCURRENTLY` statement each.
const INDEXES: &str = include_str!("../sql/indexes.sql");

/// Indexes of earlier releases that `sql/indexes.sql` replaced, dropped
/// CONCURRENTLY once their replacements are built: the token kinds' indexes
/// on the timestamp alone, before the primary key joined their keys.
const RETIRED_INDEXES: &[&str] = &[
    "refresh_tokens_expires_at_idx",
    "refresh_tokens_rotated_idx",
    "refresh_tokens_revoked_idx",
];

/// What `migrate` should do beyond the schema.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The pg_cron schedule of the cleanup job; `None` skips everything
    /// pg_cron-related (`--no-schedule`). Default: [`schedule::DEFAULT_SCHEDULE`].
    pub schedule: Option<String>,
    /// How long to wait for another migrate's lock. Default: 15 minutes, since
    /// the other may be building an index on a large table.
    pub lock_wait: Duration,
    /// The application role, created NOLOGIN when missing. Default:
    /// [`DEFAULT_APP_ROLE`].
    pub app_role: String,
    /// The monitoring role, created NOLOGIN when missing. Default:
    /// [`DEFAULT_MONITOR_ROLE`].
    pub monitor_role: String,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            schedule: Some(schedule::DEFAULT_SCHEDULE.to_string()),
            lock_wait: Duration::from_secs(15 * 60),
            app_role: DEFAULT_APP_ROLE.to_string(),
            monitor_role: DEFAULT_MONITOR_ROLE.to_string(),
        }
    }
}

/// What a migrate run did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MigrateReport {
    /// Versioned migrations applied by this run, as `V{n}__{name}`.
    pub applied: Vec<String>,
    /// Indexes this run built (missing before).
    pub indexes_built: Vec<String>,
    /// INVALID leftovers of interrupted builds that this run dropped and rebuilt.
    pub indexes_rebuilt: Vec<String>,
    /// Indexes of an earlier release that this run dropped (replaced).
    pub indexes_retired: Vec<String>,
    /// The pg_cron job id, when the schedule was installed.
    pub job_id: Option<i64>,
}

/// Applies everything, holding [`MIGRATE_LOCK_KEY`] for the duration. Safe to
/// run on every deploy and from several instances at once. pg_cron is checked
/// before anything is changed, so a database that cannot schedule the job is
/// left as it was.
///
/// # Errors
/// pg_cron errors from [`schedule::check_pg_cron`], [`Error::InvalidSchedule`],
/// [`Error::LockTimeout`], [`Error::Migration`] (naming the migration; the
/// ones before it stay applied), or [`Error::Db`] naming the file or index.
pub async fn migrate(client: &mut Client, options: &MigrateOptions) -> Result<MigrateReport> {
    if let Some(cron) = &options.schedule {
        schedule::check_schedule(cron)?;
    }
    acquire_lock(client, options.lock_wait).await?;
    let result = migrate_locked(client, options).await;
    let unlock = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATE_LOCK_KEY])
        .await
        .map_err(db("releasing the deploy lock"));
    let report = result?;
    unlock?;
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
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATE_LOCK_KEY])
            .await
            .map_err(db("taking the deploy lock"))?;
        if row.get::<_, bool>(0) {
            return Ok(());
        }
        if started.elapsed() >= wait {
            return Err(Error::LockTimeout {
                waited_s: wait.as_secs(),
                key: MIGRATE_LOCK_KEY,
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
    if options.schedule.is_some() {
        schedule::check_pg_cron(client).await?;
    }
    let mut report = MigrateReport::default();
    let applied = migrations::runner().run_async(client).await?;
    report.applied = applied
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    for name in &report.applied {
        tracing::info!(migration = %name, "applied");
    }

    apply_definitions(client, options).await?;

    for index in index_statements() {
        build_index(client, &index, &mut report).await?;
    }
    for name in RETIRED_INDEXES {
        retire_index(client, name, &mut report).await?;
    }

    if let Some(cron) = &options.schedule {
        report.job_id = Some(schedule::install_schedule(client, cron).await?);
    }
    Ok(report)
}

/// Replaces every function and procedure in schema auth with the ones in
/// `sql/`, in one transaction: dropping them first lets a release change a
/// signature or return type, which `CREATE OR REPLACE` refuses, and callers
/// see the old set or the new one, never a mix. Trigger functions belong to
/// the versioned migrations and stay. The grants go with them (a dropped
/// function loses its grants).
async fn apply_definitions(client: &mut Client, options: &MigrateOptions) -> Result<()> {
    let tx = client
        .transaction()
        .await
        .map_err(db("applying sql/ definitions"))?;
    tx.batch_execute(
        "DO $$
         DECLARE r record;
         BEGIN
             FOR r IN SELECT p.oid::regprocedure AS routine, p.prokind
                      FROM pg_catalog.pg_proc p
                      WHERE p.pronamespace = 'auth'::regnamespace
                        AND p.prokind IN ('f', 'p')
                        AND p.prorettype <> 'pg_catalog.trigger'::regtype
             LOOP
                 EXECUTE format('DROP %s %s', CASE r.prokind WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END, r.routine);
             END LOOP;
         END $$",
    )
    .await
    .map_err(db("dropping the previous sql/ definitions"))?;
    for (file, sql) in DEFINITIONS {
        tx.batch_execute(sql)
            .await
            .map_err(db(format!("applying {file}")))?;
    }
    tx.execute(
        "SELECT auth.apply_grants(p_app_role => $1, p_monitor_role => $2)",
        &[&options.app_role, &options.monitor_role],
    )
    .await
    .map_err(db(
        "granting access to the application and monitoring roles",
    ))?;
    tx.commit().await.map_err(db("applying sql/ definitions"))
}

/// One index from `sql/indexes.sql`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDefinition {
    /// Index name (schema `auth`).
    pub name: String,
    /// The `CREATE INDEX CONCURRENTLY IF NOT EXISTS …` statement.
    pub statement: String,
}

/// The purge's indexes as `sql/indexes.sql` defines them.
pub fn index_statements() -> Vec<IndexDefinition> {
    let code: Vec<&str> = INDEXES
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
/// first dropping an INVALID leftover of an interrupted build.
async fn build_index(
    client: &Client,
    index: &IndexDefinition,
    report: &mut MigrateReport,
) -> Result<()> {
    let context = || format!("building index auth.{}", index.name);
    let existing = client
        .query_opt(
            "SELECT i.indisvalid FROM pg_catalog.pg_index i
             JOIN pg_catalog.pg_class c ON c.oid = i.indexrelid
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'auth' AND c.relname = $1",
            &[&index.name],
        )
        .await
        .map_err(db(context()))?
        .map(|row| row.get::<_, bool>(0));
    match existing {
        Some(true) => return Ok(()),
        Some(false) => {
            tracing::warn!(index = %index.name, "dropping INVALID index left by an interrupted build");
            client
                .batch_execute(&format!(
                    "DROP INDEX CONCURRENTLY IF EXISTS auth.\"{}\"",
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

/// Drops index `name` of an earlier release CONCURRENTLY (its own statement,
/// outside any transaction) when it exists, so token traffic never waits.
async fn retire_index(client: &Client, name: &str, report: &mut MigrateReport) -> Result<()> {
    let context = || format!("dropping the replaced index auth.{name}");
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'auth' AND c.relname = $1 AND c.relkind = 'i'",
            &[&name],
        )
        .await
        .map_err(db(context()))?
        .is_some();
    if exists {
        tracing::info!(index = %name, "dropping replaced index concurrently");
        client
            .batch_execute(&format!(
                "DROP INDEX CONCURRENTLY IF EXISTS auth.\"{name}\""
            ))
            .await
            .map_err(db(context()))?;
        report.indexes_retired.push(name.to_string());
    }
    Ok(())
}
