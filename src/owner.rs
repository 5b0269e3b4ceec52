//! Who owns what in token-janitor's schema (`auth`, or `--schema NAME`).
//! token-janitor's objects belong to one owner role, and migrate touches only
//! its record: the tables, indexes and routines its SQL declares (by name,
//! relative to the schema) and everything the owner role owns in the schema.
//! [`preflight`] reads the database and refuses, before anything is changed,
//! when an object in the way is not token-janitor's; [`ensure_roles`] and
//! [`hand_over`] then make the owner role the owner of what migrate created.

use std::collections::{BTreeSet, HashMap};

use tokio_postgres::Client;

use crate::error::db;
use crate::operator::{Error, Result};
use crate::schema::Schema;

/// The kinds of object token-janitor's SQL creates in schema `auth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Table,
    Index,
    Routine,
    Type,
}

/// One object token-janitor's SQL creates: its kind, its name in `auth`, and
/// the versioned migration that creates it (`None`: re-applied by `sql/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declared {
    kind: Kind,
    name: String,
    migration: Option<i64>,
}

/// The objects `sql` creates in schema `auth`: every `CREATE [OR REPLACE]
/// TABLE | FUNCTION | PROCEDURE | TYPE auth.name` and `CREATE [UNIQUE] INDEX
/// [CONCURRENTLY] [IF NOT EXISTS] name ON auth.table`, outside `--` comments.
fn declarations(sql: &str, migration: Option<i64>) -> Vec<Declared> {
    let code: String = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let words: Vec<&str> = code.split_whitespace().collect();
    let word = |i: usize, expected: &str| {
        words
            .get(i)
            .is_some_and(|w| w.eq_ignore_ascii_case(expected))
    };
    let identifier = |text: &str| -> String {
        text.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut found = Vec::new();
    for i in 0..words.len() {
        if !word(i, "CREATE") {
            continue;
        }
        let mut j = i + 1;
        if word(j, "OR") && word(j + 1, "REPLACE") {
            j += 2;
        }
        if word(j, "UNIQUE") {
            j += 1;
        }
        let kind = if word(j, "TABLE") {
            Kind::Table
        } else if word(j, "INDEX") {
            Kind::Index
        } else if word(j, "FUNCTION") || word(j, "PROCEDURE") {
            Kind::Routine
        } else if word(j, "TYPE") {
            Kind::Type
        } else {
            continue;
        };
        j += 1;
        if word(j, "CONCURRENTLY") {
            j += 1;
        }
        if word(j, "IF") && word(j + 1, "NOT") && word(j + 2, "EXISTS") {
            j += 3;
        }
        let Some(&name) = words.get(j) else { continue };
        let name = match kind {
            Kind::Index
                if word(j + 1, "ON")
                    && words.get(j + 2).is_some_and(|t| t.starts_with("auth.")) =>
            {
                identifier(name)
            }
            Kind::Table | Kind::Routine | Kind::Type => match name.strip_prefix("auth.") {
                Some(rest) => identifier(rest),
                None => continue,
            },
            Kind::Index => continue,
        };
        found.push(Declared {
            kind,
            name,
            migration,
        });
    }
    found
}

/// Everything token-janitor creates in `auth`: what the versioned migrations
/// (with their versions) and the re-applied files declare, the tables migrate
/// creates itself (its migration history), and the routines earlier
/// releases' files defined under names since retired.
pub fn record(
    migrations: &[(i64, String)],
    definitions: &[&str],
    tables: &[&str],
    retired_routines: &[&str],
) -> Vec<Declared> {
    let mut all: Vec<Declared> = migrations
        .iter()
        .flat_map(|(version, sql)| declarations(sql, Some(*version)))
        .collect();
    all.extend(definitions.iter().flat_map(|sql| declarations(sql, None)));
    all.extend(tables.iter().map(|name| Declared {
        kind: Kind::Table,
        name: (*name).to_string(),
        migration: None,
    }));
    all.extend(retired_routines.iter().map(|name| Declared {
        kind: Kind::Routine,
        name: (*name).to_string(),
        migration: None,
    }));
    all
}

/// The names of the routines in `record`: the only routines migrate may drop.
pub fn routine_names(record: &[Declared]) -> Vec<String> {
    record
        .iter()
        .filter(|d| d.kind == Kind::Routine)
        .map(|d| d.name.clone())
        .collect()
}

/// pg_class.relkind of a declared table or composite type.
fn kind_relkind(kind: Kind) -> &'static str {
    if kind == Kind::Type { "c" } else { "r" }
}

/// What a declared table or type is called in messages and in ALTER.
fn kind_noun(kind: Kind) -> &'static str {
    if kind == Kind::Type { "type" } else { "table" }
}

/// Quotes an identifier for SQL text (`"name"`, inner quotes doubled).
pub fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Who token-janitor's schema belongs to, as migrate found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SchemaState {
    /// Missing: migration V1 creates it and the owner role gets it.
    Absent,
    /// The owner role's.
    Owned,
    /// Left by an install from before the owner role (a superuser's, holding
    /// only token-janitor's objects): the owner role gets it.
    Legacy,
    /// Someone else's (e.g. Supabase's, or one an administrator made before
    /// the first install): token-janitor installs beside that someone's
    /// objects; the schema keeps its owner and grants, and migrate only adds
    /// USAGE for its roles (and CREATE for the owner role).
    Foreign,
}

/// What [`preflight`] found: who deploys, who owns, and what must be created.
#[derive(Debug, Clone)]
pub struct Deployment {
    /// The connected role.
    pub deployer: String,
    /// The owner role.
    pub owner: String,
    /// Roles to create: (name, LOGIN).
    create_roles: Vec<(String, bool)>,
    /// The owner role exists without LOGIN and the job will run as it.
    grant_login: bool,
    schema: Schema,
    state: SchemaState,
}

/// What an object found in schema `auth` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// A table, index, sequence, view or composite type (pg_class).
    Relation,
    /// A function or procedure.
    Routine,
    /// A domain, enum or range type.
    Type,
}

/// One object found in schema `auth`.
#[derive(Debug)]
struct Found {
    class: Class,
    name: String,
    /// How to name it in a message: `auth.name` or `auth.name(args)`.
    display: String,
    relkind: String,
    owner: String,
    owner_superuser: bool,
    /// For an index, the name of its table.
    index_table: Option<String>,
}

/// The schema and the roles migrate's options name.
pub struct Roles<'a> {
    /// `--schema`.
    pub schema: &'a Schema,
    /// `--owner-role`, when given.
    pub owner: Option<&'a str>,
    /// `--app-role`.
    pub app: &'a str,
    /// `--monitor-role`.
    pub monitor: &'a str,
    /// The job will run as the owner role (pg_cron needs it to LOGIN).
    pub schedule: bool,
}

/// The connected role and the owner role it deploys for.
struct Connected {
    deployer: String,
    superuser: bool,
    createrole: bool,
    owner: String,
}

async fn connected(
    client: &Client,
    schema: &Schema,
    owner_role: Option<&str>,
) -> Result<Connected> {
    let me = client
        .query_one(
            "SELECT current_user::text, r.rolsuper, r.rolcreaterole
             FROM pg_catalog.pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(db("reading the connected role"))?;
    let deployer: String = me.get(0);
    let superuser: bool = me.get(1);
    let owner = owner_role.map(str::to_string).unwrap_or_else(|| {
        if superuser {
            schema.default_role("owner")
        } else {
            deployer.clone()
        }
    });
    Ok(Connected {
        deployer,
        superuser,
        createrole: me.get(2),
        owner,
    })
}

/// The owner role a migrate with `--owner-role` `owner_role` deploys for:
/// that role, else the schema's default (`token_janitor_owner` in `auth`)
/// for a superuser, else the connected role itself.
///
/// # Errors
/// [`Error::Db`] when the connected role cannot be read.
pub async fn owner_role(
    client: &Client,
    schema: &Schema,
    owner_role: Option<&str>,
) -> Result<String> {
    Ok(connected(client, schema, owner_role).await?.owner)
}

/// Reads the database and decides who owns token-janitor's objects. Changes
/// nothing. Refuses with [`Error::Conflict`], listing every problem and what
/// to do about it, when migrate would have to alter or drop an object it did
/// not create, or could not give its objects to a suitable owner.
///
/// # Errors
/// [`Error::Conflict`], or [`Error::Db`] when the catalogues cannot be read.
pub async fn preflight(
    client: &Client,
    roles: &Roles<'_>,
    record: &[Declared],
    applied: &BTreeSet<i64>,
) -> Result<Deployment> {
    let Connected {
        deployer,
        superuser,
        createrole,
        owner,
    } = connected(client, roles.schema, roles.owner).await?;
    let schema = roles.schema;
    let mut conflicts = Vec::new();

    let mut create_roles = Vec::new();
    let mut grant_login = false;
    let wanted = [
        (owner.clone(), roles.schedule),
        (roles.app.to_string(), false),
        (roles.monitor.to_string(), false),
    ];
    for (role, login) in wanted {
        let row = client
            .query_opt(
                "SELECT rolsuper, rolcanlogin FROM pg_catalog.pg_roles WHERE rolname = $1",
                &[&role],
            )
            .await
            .map_err(db(format!("reading role {role}")))?;
        let may_create = superuser || createrole;
        match row {
            None if may_create => {
                if !create_roles.iter().any(|(r, _): &(String, bool)| *r == role) {
                    create_roles.push((role, login));
                }
            }
            None => conflicts.push(format!(
                "role {role} does not exist and {deployer} may not create it: create it once as a \
                 role with CREATEROLE, or name an existing role instead (MigrateOptions::owner_role, \
                 MigrateOptions::app_role, MigrateOptions::monitor_role)"
            )),
            Some(row) if role == owner => {
                if row.get::<_, bool>(0) {
                    conflicts.push(format!(
                        "role {owner} is a superuser, and token-janitor's SECURITY DEFINER \
                         routines and its pg_cron job would run as a superuser: name a role \
                         that is not one (MigrateOptions::owner_role; default {})",
                        schema.default_role("owner")
                    ));
                }
                if login && !row.get::<_, bool>(1) {
                    if may_create {
                        grant_login = true;
                    } else {
                        conflicts.push(format!(
                            "role {owner} cannot log in, and the pg_cron job connects as it: \
                             ALTER ROLE {owner} LOGIN as a role with CREATEROLE, or migrate \
                             without a schedule (ScheduleChoice::Off)"
                        ));
                    }
                }
            }
            Some(_) => {}
        }
    }
    if !superuser && owner != deployer {
        conflicts.push(format!(
            "role {deployer} is not a superuser, so it can deploy only as the owner role itself \
             (only a superuser may give objects to another role or schedule a pg_cron job for \
             it): leave MigrateOptions::owner_role unset to make {deployer} the owner, or run \
             migrate as a superuser"
        ));
    }

    let schema_row = client
        .query_opt(
            "SELECT pg_catalog.pg_get_userbyid(n.nspowner)::text, r.rolsuper,
                    pg_catalog.has_schema_privilege(n.oid, 'CREATE')
             FROM pg_catalog.pg_namespace n JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
             WHERE n.nspname = $1",
            &[&schema.name()],
        )
        .await
        .map_err(db(format!("reading schema {schema}")))?;
    let found = match &schema_row {
        Some(_) => objects_in_schema(client, schema).await?,
        None => Vec::new(),
    };

    let declared =
        |kind: Kind, name: &str| record.iter().find(|d| d.kind == kind && d.name == name);
    let is_table = |name: &str| declared(Kind::Table, name).is_some();
    // A superuser's object of token-janitor's name is its own only in an
    // install from before the owner role (V1 ran here and the owner role owns
    // nothing yet): those releases left everything to the superuser that ran
    // migrate. Anywhere else it is someone else's.
    let before_owner_role = applied.contains(&1) && !found.iter().any(|f| f.owner == owner);
    let adoptable =
        |f: &Found| f.owner == owner || (superuser && f.owner_superuser && before_owner_role);
    let mut foreign = false;
    for f in &found {
        match f.class {
            Class::Relation if f.relkind == "i" => {
                if declared(Kind::Index, &f.name).is_some()
                    && !f.index_table.as_deref().is_some_and(is_table)
                {
                    conflicts.push(format!(
                        "index {} is not on one of token-janitor's tables but has the name of one \
                         of its indexes: rename or drop it, or install token-janitor in another database",
                        f.display
                    ));
                }
            }
            Class::Relation | Class::Type => match declared(Kind::Table, &f.name)
                .or_else(|| declared(Kind::Type, &f.name))
            {
                Some(Declared { migration: Some(v), .. }) if !applied.contains(v) => conflicts.push(format!(
                    "{} already exists but token-janitor did not create it (its migration V{v} has \
                     not run here): install token-janitor in another database, or rename or drop {}",
                    f.display, f.display
                )),
                Some(d) if f.relkind != kind_relkind(d.kind) => conflicts.push(format!(
                    "{} should be token-janitor's {} but is not one: install token-janitor \
                     in another database",
                    f.display,
                    kind_noun(d.kind)
                )),
                Some(d) if !adoptable(f) => conflicts.push(format!(
                    "{} {} belongs to role {}, not to the owner role {owner}: as a superuser, \
                     ALTER {} {} OWNER TO {owner}, or run migrate as a superuser",
                    kind_noun(d.kind),
                    f.display,
                    f.owner,
                    kind_noun(d.kind).to_uppercase(),
                    f.display
                )),
                Some(_) => {}
                None if declared(Kind::Index, &f.name).is_some() => conflicts.push(format!(
                    "{} has the name of one of token-janitor's indexes: rename or drop it, or \
                     install token-janitor in another database",
                    f.display
                )),
                None => foreign |= f.relkind != "S",
            },
            Class::Routine => match declared(Kind::Routine, &f.name) {
                Some(Declared { migration: Some(v), .. }) if !applied.contains(v) => conflicts.push(format!(
                    "routine {} already exists and token-janitor's migration V{v} creates one of that \
                     name: rename or drop it, or install token-janitor in another database",
                    f.display
                )),
                Some(_) if !adoptable(f) => conflicts.push(format!(
                    "routine {} belongs to role {}, and token-janitor defines a routine of that \
                     name: rename it, or install token-janitor in another database",
                    f.display, f.owner
                )),
                Some(_) => {}
                None => foreign |= f.owner != owner,
            },
        }
    }

    let state = match schema_row {
        None => SchemaState::Absent,
        Some(row) if row.get::<_, String>(0) == owner => SchemaState::Owned,
        Some(row) if superuser && row.get::<_, bool>(1) && !foreign && before_owner_role => {
            SchemaState::Legacy
        }
        Some(row) => {
            if !row.get::<_, bool>(2) {
                conflicts.push(format!(
                    "schema {schema} belongs to role {} and {deployer} may not create objects in \
                     it: GRANT CREATE ON SCHEMA {schema} TO {deployer}, or install token-janitor \
                     in another schema (MigrateOptions::schema)",
                    row.get::<_, String>(0)
                ));
            }
            SchemaState::Foreign
        }
    };
    if !conflicts.is_empty() {
        return Err(Error::Conflict(conflicts));
    }
    Ok(Deployment {
        deployer,
        owner,
        create_roles,
        grant_login,
        schema: schema.clone(),
        state,
    })
}

/// Every relation, routine and domain, enum or range type in `schema`.
async fn objects_in_schema(client: &Client, schema: &Schema) -> Result<Vec<Found>> {
    let rows = client
        .query(
            &*schema.sql("SELECT 'relation', c.relname::text, 'auth.' || pg_catalog.quote_ident(c.relname),
                    c.relkind::text, r.rolname::text, r.rolsuper, t.relname::text
             FROM pg_catalog.pg_class c
             JOIN pg_catalog.pg_roles r ON r.oid = c.relowner
             LEFT JOIN pg_catalog.pg_index i ON i.indexrelid = c.oid
             LEFT JOIN pg_catalog.pg_class t ON t.oid = i.indrelid
             WHERE c.relnamespace = 'auth'::pg_catalog.regnamespace
             UNION ALL
             SELECT 'routine', p.proname::text, p.oid::pg_catalog.regprocedure::text,
                    p.prokind::text, r.rolname::text, r.rolsuper, NULL
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_roles r ON r.oid = p.proowner
             WHERE p.pronamespace = 'auth'::pg_catalog.regnamespace
             UNION ALL
             SELECT 'type', y.typname::text, 'type auth.' || pg_catalog.quote_ident(y.typname),
                    y.typtype::text, r.rolname::text, r.rolsuper, NULL
             FROM pg_catalog.pg_type y JOIN pg_catalog.pg_roles r ON r.oid = y.typowner
             WHERE y.typnamespace = 'auth'::pg_catalog.regnamespace AND y.typtype IN ('d', 'e', 'r', 'm')"),
            &[],
        )
        .await
        .map_err(db(format!("listing the objects in schema {schema}")))?;
    Ok(rows
        .iter()
        .map(|row| Found {
            class: match row.get::<_, &str>(0) {
                "relation" => Class::Relation,
                "routine" => Class::Routine,
                _ => Class::Type,
            },
            name: row.get(1),
            display: row.get(2),
            relkind: row.get(3),
            owner: row.get(4),
            owner_superuser: row.get(5),
            index_table: row.get(6),
        })
        .collect())
}

/// Creates the roles [`preflight`] found missing (the owner LOGIN when the
/// job runs as it, the others NOLOGIN) and lets an existing owner role log in
/// when the job will run as it. A role a concurrent migrate of another
/// database created meanwhile is fine.
///
/// # Errors
/// [`Error::Db`] naming the role.
pub async fn ensure_roles(client: &Client, deployment: &Deployment) -> Result<()> {
    let mut grant_login = deployment.grant_login;
    for (role, login) in &deployment.create_roles {
        let statement = format!(
            "CREATE ROLE {} {}",
            ident(role),
            if *login { "LOGIN" } else { "NOLOGIN" }
        );
        if let Err(err) = client.batch_execute(&statement).await {
            let code = err.code().map(|c| c.code());
            if !matches!(code, Some("42710") | Some("23505")) {
                return Err(db(format!("creating role {role}"))(err).into());
            }
            // Another migrate created it meanwhile, perhaps NOLOGIN.
            grant_login |= *login;
        }
    }
    if grant_login {
        tracing::info!(role = %deployment.owner, "letting the owner role log in: the pg_cron job connects as it");
        client
            .batch_execute(&format!("ALTER ROLE {} LOGIN", ident(&deployment.owner)))
            .await
            .map_err(db(format!("letting role {} log in", deployment.owner)))?;
    }
    Ok(())
}

/// Gives the owner role what migrate created or an install from before the
/// owner role left behind (the schema unless it is someone else's, and
/// every declared table and routine), and lets the owner, application and
/// monitoring roles use a schema that is someone else's.
///
/// # Errors
/// [`Error::Db`] naming the object.
pub async fn hand_over(
    client: &Client,
    deployment: &Deployment,
    record: &[Declared],
    app_role: &str,
    monitor_role: &str,
) -> Result<()> {
    let owner = ident(&deployment.owner);
    let schema = &deployment.schema;
    match deployment.state {
        SchemaState::Absent | SchemaState::Legacy => client
            .batch_execute(&format!("ALTER SCHEMA {schema} OWNER TO {owner}"))
            .await
            .map_err(db(format!("giving schema {schema} to the owner role")))?,
        SchemaState::Owned => {}
        SchemaState::Foreign => {
            let mut grants = format!(
                "GRANT USAGE ON SCHEMA {schema} TO {}, {}",
                ident(app_role),
                ident(monitor_role)
            );
            if deployment.owner != deployment.deployer {
                grants.push_str(&format!(
                    "; GRANT USAGE, CREATE ON SCHEMA {schema} TO {owner}"
                ));
            }
            client.batch_execute(&grants).await.map_err(db(format!(
                "granting the use of schema {schema}, which belongs to another role"
            )))?
        }
    }
    let mut names: HashMap<&str, Vec<String>> = HashMap::new();
    for d in record {
        let class = match d.kind {
            Kind::Table => "TABLE",
            Kind::Type => "TYPE",
            Kind::Routine => "ROUTINE",
            Kind::Index => continue,
        };
        names.entry(class).or_default().push(d.name.clone());
    }
    let rows = client
        .query(
            &*schema.sql(
                "SELECT 'TABLE', c.oid::pg_catalog.regclass::text FROM pg_catalog.pg_class c
             WHERE c.relnamespace = 'auth'::pg_catalog.regnamespace AND c.relkind = 'r'
               AND c.relname = ANY ($1) AND c.relowner <> $3::text::pg_catalog.regrole
             UNION ALL
             SELECT 'ROUTINE', p.oid::pg_catalog.regprocedure::text FROM pg_catalog.pg_proc p
             WHERE p.pronamespace = 'auth'::pg_catalog.regnamespace
               AND p.proname = ANY ($2) AND p.proowner <> $3::text::pg_catalog.regrole
             UNION ALL
             SELECT 'TYPE', t.oid::pg_catalog.regtype::text FROM pg_catalog.pg_type t
             WHERE t.typnamespace = 'auth'::pg_catalog.regnamespace
               AND t.typname = ANY ($4) AND t.typowner <> $3::text::pg_catalog.regrole",
            ),
            &[
                &names.get("TABLE").cloned().unwrap_or_default(),
                &names.get("ROUTINE").cloned().unwrap_or_default(),
                &ident(&deployment.owner),
                &names.get("TYPE").cloned().unwrap_or_default(),
            ],
        )
        .await
        .map_err(db(
            "listing token-janitor's objects to give to the owner role",
        ))?;
    for row in rows {
        let (class, object): (&str, &str) = (row.get(0), row.get(1));
        client
            .batch_execute(&format!("ALTER {class} {object} OWNER TO {owner}"))
            .await
            .map_err(db(format!("giving {object} to the owner role")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_are_the_tables_indexes_routines_and_types_created_in_auth() {
        let sql = "-- CREATE TABLE auth.in_a_comment (x int);
            CREATE SCHEMA IF NOT EXISTS auth;
            CREATE TABLE auth.sessions (id uuid); -- CREATE TABLE auth.after_code (x int)
            CREATE UNIQUE INDEX sessions_user_id_idx ON auth.sessions (user_id);
            CREATE INDEX CONCURRENTLY IF NOT EXISTS refresh_tokens_rotated_idx
                ON auth.refresh_tokens (revoked_at) WHERE revoke_reason = 'rotated';
            CREATE OR REPLACE FUNCTION auth.issue_token(p_user_id text)
            CREATE PROCEDURE auth.run_token_cleanup()
            CREATE TYPE auth.purge_position AS (key timestamptz);
            CREATE TYPE public.elsewhere_type AS (x int);
            CREATE TABLE public.elsewhere (x int);
            CREATE INDEX elsewhere_idx ON public.elsewhere (x);
            CREATE ROLE someone;";
        let found: Vec<(Kind, String, Option<i64>)> = declarations(sql, Some(7))
            .into_iter()
            .map(|d| (d.kind, d.name, d.migration))
            .collect();
        assert_eq!(
            found,
            vec![
                (Kind::Table, "sessions".to_string(), Some(7)),
                (Kind::Index, "sessions_user_id_idx".to_string(), Some(7)),
                (
                    Kind::Index,
                    "refresh_tokens_rotated_idx".to_string(),
                    Some(7)
                ),
                (Kind::Routine, "issue_token".to_string(), Some(7)),
                (Kind::Routine, "run_token_cleanup".to_string(), Some(7)),
                (Kind::Type, "purge_position".to_string(), Some(7)),
            ]
        );
    }

    #[test]
    fn identifiers_are_quoted_with_inner_quotes_doubled() {
        assert_eq!(ident("token_janitor_owner"), "\"token_janitor_owner\"");
        assert_eq!(ident("we\"ird"), "\"we\"\"ird\"");
    }
}
