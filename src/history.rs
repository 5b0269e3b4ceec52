//! token-janitor's migration history: refinery's table, kept in
//! token-janitor's schema as `auth.token_janitor_migrations` (`NAME.…` with
//! `--schema NAME`), where no application's runner
//! looks (refinery's own default is `public.refinery_schema_history`, sqlx's
//! `_sqlx_migrations`, diesel's `__diesel_schema_migrations`, Flyway's
//! `flyway_schema_history`) and where no role but the owner role and
//! superusers can write.
//!
//! Releases up to 0.1 kept it in `public.refinery_schema_history`, which the
//! database owner controls: [`prepare`] moves token-janitor's rows out of
//! it once (into schema `auth`: those releases had no `--schema`), and only when that table is one token-janitor may touch: a plain
//! table of a role token-janitor runs as, with no trigger or rule, locked while it is checked and read, so nothing
//! planted there runs in a superuser's migrate. An application's own rows in
//! it stay where they are.

use std::collections::BTreeSet;

use tokio_postgres::{Client, GenericClient};

use crate::error::db;
use crate::migrate::EmbeddedMigration;
use crate::operator::{Error, Result};
use crate::schema::Schema;

/// The name of the history table in token-janitor's schema.
pub const TABLE_NAME: &str = "token_janitor_migrations";

/// Where refinery keeps token-janitor's history in `schema`
/// (schema-qualified: refinery puts the name into its statements as it is).
pub fn table(schema: &Schema) -> String {
    format!("{schema}.{TABLE_NAME}")
}

/// Where releases up to 0.1 kept it.
pub const LEGACY_TABLE: &str = "public.refinery_schema_history";

/// Whether the relation `$1` (an oid) is one token-janitor may read and write
/// as the connected role, given the owner role `$2`: a plain table (not a
/// view, a partitioned or foreign table), owned by a superuser, the connected
/// role or the owner role (a role that owns `public` cannot plant one of its
/// own), with no trigger and no rule (no code of anyone else's runs when
/// token-janitor reads or deletes rows), no child table, and columns of
/// built-in types only.
const TRUSTED: &str = "SELECT c.relkind = 'r'
        AND (r.rolsuper OR r.rolname = current_user OR r.rolname = $2)
        AND NOT c.relhasrules
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger t WHERE t.tgrelid = c.oid)
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_inherits i WHERE i.inhparent = c.oid)
        AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_attribute a
                        JOIN pg_catalog.pg_type y ON y.oid = a.atttypid
                        WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                          AND y.typnamespace <> 'pg_catalog'::pg_catalog.regnamespace),
        r.rolname::text
    FROM pg_catalog.pg_class c JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
    WHERE c.oid = $1";

/// The history migrate found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No history: a fresh install (or one whose history is somewhere
    /// token-janitor will not read; preflight then names what is in the way).
    None,
    /// [`table`], with the versions it records.
    Current(BTreeSet<i64>),
    /// token-janitor's rows in [`LEGACY_TABLE`], to move by [`adopt_legacy`].
    Legacy(BTreeSet<i64>),
}

impl Found {
    /// The versions recorded as applied.
    pub fn versions(&self) -> BTreeSet<i64> {
        match self {
            Self::None => BTreeSet::new(),
            Self::Current(v) | Self::Legacy(v) => v.clone(),
        }
    }
}

/// The oid of relation `name` (schema-qualified), if it exists.
async fn oid(client: &impl GenericClient, name: &str) -> Result<Option<u32>> {
    Ok(client
        .query_one(
            "SELECT pg_catalog.to_regclass($1)::pg_catalog.oid",
            &[&name],
        )
        .await
        .map_err(db(format!("looking up {name}")))?
        .get(0))
}

/// Whether relation `oid` is one token-janitor may touch, and its owner.
async fn trusted(client: &impl GenericClient, oid: u32, owner: &str) -> Result<(bool, String)> {
    let row = client
        .query_one(TRUSTED, &[&oid, &owner])
        .await
        .map_err(db("checking who controls the migration history"))?;
    Ok((row.get(0), row.get(1)))
}

/// Reads the history: [`table`] when it exists (refusing one token-janitor
/// did not create), else, in schema `auth`, token-janitor's rows of a
/// trusted [`LEGACY_TABLE`]. Changes nothing. `owner`: the owner role this
/// migrate deploys for.
///
/// # Errors
/// [`Error::Conflict`] when [`table`] is not a table token-janitor may
/// touch; [`Error::Db`] when it cannot be read.
pub async fn read(client: &mut Client, schema: &Schema, owner: &str) -> Result<Found> {
    let table = table(schema);
    if let Some(oid) = oid(client, &table).await? {
        let (ok, holder) = trusted(client, oid, owner).await?;
        if !ok {
            return Err(Error::Conflict(vec![format!(
                "{table} is not token-janitor's migration history (it belongs to role {holder}, \
                 or is not a plain table, or has a trigger or rule): drop or rename it, or \
                 install token-janitor in another database"
            )]));
        }
        let rows = client
            .query(
                &format!("SELECT version::pg_catalog.int8 FROM {table}"),
                &[],
            )
            .await
            .map_err(db(format!("reading the applied migrations from {table}")))?;
        return Ok(Found::Current(rows.iter().map(|r| r.get(0)).collect()));
    }
    if !schema.is_default() {
        return Ok(Found::None);
    }
    let Some(versions) = legacy_versions(client, owner, false).await? else {
        return Ok(Found::None);
    };
    Ok(if versions.is_empty() {
        Found::None
    } else {
        Found::Legacy(versions)
    })
}

/// token-janitor's versions in [`LEGACY_TABLE`] (rows whose version and name
/// are one of this binary's migrations), read under a lock that keeps the
/// table as checked; with `take`, also moved into schema `auth`'s [`table`] (created here)
/// and deleted from it, and the table dropped when nothing else is left in
/// it. `None` when there is no such table or token-janitor may not touch it.
async fn legacy_versions(
    client: &mut Client,
    owner: &str,
    take: bool,
) -> Result<Option<BTreeSet<i64>>> {
    let context = || format!("reading token-janitor's rows of {LEGACY_TABLE}");
    let table = table(&Schema::default());
    let Some(oid) = oid(client, LEGACY_TABLE).await? else {
        return Ok(None);
    };
    // One token-janitor may not touch is not locked either: LOCK needs
    // privileges on it that a deploying role need not have (an application's
    // own history, of another role), and it is none of token-janitor's.
    let (ok, holder) = trusted(client, oid, owner).await?;
    if !ok {
        return Ok(not_touched(&holder));
    }
    let tx = client.transaction().await.map_err(db(context()))?;
    // The lock comes first: from then on the table cannot be dropped and
    // replaced (by the owner of public) or altered, so what is checked below
    // is what is read. Locking runs no code of the table's owner.
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '10s'; LOCK TABLE {LEGACY_TABLE} IN SHARE ROW EXCLUSIVE MODE"
    ))
    .await
    .map_err(db(context()))?;
    if self::oid(&tx, LEGACY_TABLE).await? != Some(oid) {
        return Ok(None);
    }
    let (ok, holder) = trusted(&tx, oid, owner).await?;
    if !ok {
        return Ok(not_touched(&holder));
    }
    let (versions, names) = embedded();
    let ours = "FROM ONLY public.refinery_schema_history h
                WHERE (h.version::pg_catalog.int8, h.name::pg_catalog.text)
                      IN (SELECT * FROM ROWS FROM (pg_catalog.unnest($1::pg_catalog.int8[]),
                                                 pg_catalog.unnest($2::pg_catalog.text[])))";
    let rows = tx
        .query(
            &format!("SELECT h.version::pg_catalog.int8 {ours}"),
            &[&versions, &names],
        )
        .await
        .map_err(db(context()))?;
    let found: BTreeSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    if take && !found.is_empty() {
        tx.batch_execute(&create_statement(&table))
            .await
            .map_err(db(format!("creating {table}")))?;
        tx.execute(
            &format!(
                "INSERT INTO {table} (version, name, applied_on, checksum)
                 SELECT h.version, h.name, h.applied_on, h.checksum {ours}"
            ),
            &[&versions, &names],
        )
        .await
        .map_err(db(format!(
            "moving token-janitor's rows of {LEGACY_TABLE} to {table}"
        )))?;
        tx.execute(&format!("DELETE {ours}"), &[&versions, &names])
            .await
            .map_err(db(format!(
                "deleting token-janitor's rows of {LEGACY_TABLE}"
            )))?;
        let left: i64 = tx
            .query_one(
                "SELECT pg_catalog.count(*) FROM ONLY public.refinery_schema_history",
                &[],
            )
            .await
            .map_err(db(context()))?
            .get(0);
        if left == 0 {
            tx.batch_execute(&format!("DROP TABLE {LEGACY_TABLE}"))
                .await
                .map_err(db(format!("dropping the emptied {LEGACY_TABLE}")))?;
        }
        tracing::info!(
            rows = found.len(),
            left,
            from = LEGACY_TABLE,
            to = table,
            "moved the migration history"
        );
    }
    tx.commit().await.map_err(db(context()))?;
    Ok(Some(found))
}

/// Says that [`LEGACY_TABLE`], of role `holder`, is left alone; no versions.
fn not_touched(holder: &str) -> Option<BTreeSet<i64>> {
    tracing::warn!(table = LEGACY_TABLE, owner = %holder, "not reading a migration history that token-janitor may not touch");
    None
}

/// This binary's migrations as (versions, names), for matching rows.
fn embedded() -> (Vec<i64>, Vec<String>) {
    crate::migrate::embedded_migrations(&Schema::default())
        .into_iter()
        .map(|EmbeddedMigration { version, name, .. }| (version, name))
        .unzip()
}

/// refinery's table, as refinery creates it (its statement, with built-in
/// types named in pg_catalog).
fn create_statement(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (
             version pg_catalog.int4 PRIMARY KEY,
             name pg_catalog.varchar(255),
             applied_on pg_catalog.varchar(255),
             checksum pg_catalog.varchar(255))"
    )
}

/// Makes [`table`] ready for refinery: creates `schema` when it is
/// missing (refinery creates its table before migration V1 runs) and moves a
/// legacy history found by [`read`]. Run after preflight.
///
/// # Errors
/// [`Error::Db`] naming the step.
pub async fn prepare(
    client: &mut Client,
    schema: &Schema,
    found: &Found,
    owner: &str,
) -> Result<()> {
    // Only when it is missing: CREATE SCHEMA IF NOT EXISTS asks for CREATE
    // on the database even when the schema is there, which an owner role
    // redeploying its own install need not have.
    let exists: bool = client
        .query_one(
            "SELECT pg_catalog.to_regnamespace($1) IS NOT NULL",
            &[&schema.name()],
        )
        .await
        .map_err(db(format!("looking up schema {schema}")))?
        .get(0);
    if !exists {
        client
            .batch_execute(&format!("CREATE SCHEMA {schema}"))
            .await
            .map_err(db(format!("creating schema {schema}")))?;
    }
    if let Found::Legacy(expected) = found {
        let moved = legacy_versions(client, owner, true).await?;
        if moved.as_ref() != Some(expected) {
            return Err(Error::Conflict(vec![format!(
                "{LEGACY_TABLE} changed while migrate read it (token-janitor's rows were {expected:?}, \
                 now {moved:?}): nothing was moved; run migrate again"
            )]));
        }
    }
    Ok(())
}
