//! What a database owner plants in schema `public` never runs in a
//! superuser's migrate, verify or status (issue 28, item 1: each
//! reproduction as a test), and an application's own refinery history in
//! `public` is left as it is while token-janitor's moves to
//! auth.token_janitor_migrations.

mod common;

use common::*;
use token_janitor::Schema;
use token_janitor::operator::{Outcome, VerifyOptions, migrate, status, verify};
use token_janitor::testing::embedded_migrations;

/// Makes a new non-superuser role the owner of `db` (and so, on PostgreSQL
/// 15, of its schema public), with a counter `public.planted_calls` that
/// what it plants advances (a sequence: the count survives a rollback).
async fn database_owner(db: &TestDb) -> String {
    let dbo = format!("tj_dbo_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {dbo} NOLOGIN;
             ALTER DATABASE {} OWNER TO {dbo};
             SET ROLE {dbo};
             CREATE SEQUENCE public.planted_calls;
             GRANT USAGE, UPDATE ON SEQUENCE public.planted_calls TO PUBLIC;
             RESET ROLE;",
            db.name()
        ))
        .await
        .unwrap();
    dbo
}

/// The body of a planted PL/pgSQL routine: counts its call and tries to make
/// `dbo` a superuser (it succeeds when the caller is one).
fn planted_body(dbo: &str) -> String {
    format!(
        "PERFORM pg_catalog.nextval('public.planted_calls');
         EXECUTE 'ALTER ROLE {dbo} SUPERUSER';"
    )
}

/// How often what `dbo` planted ran, and whether `dbo` became a superuser.
async fn planted_effect(db: &TestDb, dbo: &str) -> (i64, bool) {
    let row = db
        .client
        .query_one(
            "SELECT (SELECT COALESCE(last_value, 0) FROM pg_sequences
                     WHERE schemaname = 'public' AND sequencename = 'planted_calls'),
                    (SELECT rolsuper FROM pg_roles WHERE rolname = $1)",
            &[&dbo],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// The versions recorded in auth.token_janitor_migrations.
async fn recorded_versions(db: &TestDb) -> Vec<i64> {
    column(
        &db.client,
        "SELECT version::int8 FROM auth.token_janitor_migrations ORDER BY 1",
    )
    .await
}

fn embedded_versions() -> Vec<i64> {
    embedded_migrations(&token_janitor::Schema::default())
        .iter()
        .map(|m| m.version)
        .collect()
}

/// Every row of a history table, as text, in version order.
async fn history_rows(db: &TestDb, table: &str) -> Vec<String> {
    column(
        &db.client,
        &format!("SELECT h::text FROM {table} h ORDER BY h.version"),
    )
    .await
}

/// Issue 28 #1: the database owner's `public.refinery_schema_history`, with
/// an AFTER INSERT trigger, waits for the first install.
async fn plant_history_with_trigger(db: &TestDb) -> String {
    let dbo = database_owner(db).await;
    db.client
        .batch_execute(&format!(
            "SET ROLE {dbo};
             CREATE TABLE public.refinery_schema_history (version int4 PRIMARY KEY,
                 name varchar(255), applied_on varchar(255), checksum varchar(255));
             CREATE FUNCTION public.planted() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN {body} RETURN NULL; END $$;
             CREATE TRIGGER planted AFTER INSERT ON public.refinery_schema_history
                 FOR EACH ROW EXECUTE FUNCTION public.planted();
             RESET ROLE;",
            body = planted_body(&dbo)
        ))
        .await
        .unwrap();
    dbo
}

/// After a first install over [`plant_history_with_trigger`]: nothing ran,
/// the history is token-janitor's own, the planted table is as it was.
async fn assert_planted_history_untouched(db: &TestDb, dbo: &str) {
    assert_eq!(
        planted_effect(db, dbo).await,
        (0, false),
        "the planted trigger ran"
    );
    assert_eq!(recorded_versions(db).await, embedded_versions());
    let planted: Vec<String> = column(
        &db.client,
        "SELECT pg_get_userbyid(c.relowner)::text || ' ' || c.relkind::text
                || ' rows=' || (SELECT count(*) FROM public.refinery_schema_history)
                || ' triggers=' || (SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid)
         FROM pg_class c WHERE c.oid = 'public.refinery_schema_history'::regclass",
    )
    .await;
    assert_eq!(planted, vec![format!("{dbo} r rows=0 triggers=1")]);
}

#[tokio::test]
async fn a_history_table_planted_before_the_first_install_never_runs_in_the_cli_migrate() {
    let db = TestDb::empty().await;
    let dbo = plant_history_with_trigger(&db).await;
    run_cli_ok(&["migrate", "--no-schedule"], &cli_url(&db.url, "postgres")).await;
    assert_planted_history_untouched(&db, &dbo).await;
    drop(db);
    drop_roles(&[&dbo]).await;
}

#[tokio::test]
async fn a_history_table_planted_before_the_first_install_never_runs_in_the_library_migrate() {
    let db = TestDb::empty().await;
    let dbo = plant_history_with_trigger(&db).await;
    // An application's own connection, which does not pin its path.
    migrate(&mut db.connect_unpinned().await, &no_schedule())
        .await
        .unwrap();
    assert_planted_history_untouched(&db, &dbo).await;
    drop(db);
    drop_roles(&[&dbo]).await;
}

/// Issue 28 #2: an install of the previous release, whose history in public
/// the database owner dropped (it owns the schema) and replaced with a view
/// whose rows call its function.
#[tokio::test]
async fn a_view_in_place_of_the_previous_releases_history_is_never_read() {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 6).await;
    let dbo = database_owner(&db).await;
    db.client
        .batch_execute(&format!(
            "CREATE TABLE public.previous_history AS TABLE public.refinery_schema_history;
             ALTER TABLE public.previous_history OWNER TO {dbo};
             SET ROLE {dbo};
             DROP TABLE public.refinery_schema_history;
             CREATE FUNCTION public.planted() RETURNS bool LANGUAGE plpgsql AS $$
             BEGIN {body} RETURN true; END $$;
             CREATE VIEW public.refinery_schema_history AS
                 SELECT * FROM public.previous_history WHERE public.planted();
             RESET ROLE;",
            body = planted_body(&dbo)
        ))
        .await
        .unwrap();
    let options = VerifyOptions {
        schedule: None,
        ..VerifyOptions::default()
    };
    let report = verify(&db.url, &options).await;
    let migrations = report
        .checks
        .iter()
        .find(|c| c.name == "migrations")
        .unwrap();
    assert_eq!(migrations.outcome, Outcome::Fail, "{migrations:?}");
    assert!(
        migrations
            .evidence
            .contains("public.refinery_schema_history may hold an earlier release's (not read"),
        "{migrations:?}"
    );
    let url = cli_url(&db.url, "postgres");
    let out = run_cli(&["verify", "--no-schedule"], &url).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("run token-janitor migrate"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // migrate reads no history from the view, so the previous release's
    // tables look like someone else's: it refuses, naming them, and
    // changes nothing; the command line's log says which history it left
    // unread and whose it is (the library's error does not).
    let err = migrate(&mut db.connect().await, &no_schedule())
        .await
        .expect_err("migrate cannot adopt a history it may not read");
    let token_janitor::operator::Error::Conflict(conflicts) = &err else {
        panic!("{err:?}")
    };
    assert!(
        conflicts.iter().any(|c| c.contains(
            "auth.sessions already exists but token-janitor did not create it (its migration V1 has not run here)"
        )),
        "{conflicts:#?}"
    );
    let out = run_cli(&["migrate", "--no-schedule"], &url).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not reading a migration history that token-janitor may not touch")
            && stderr.contains(&dbo)
            && stderr.contains("auth.sessions already exists"),
        "{stderr}"
    );
    let moved: Vec<bool> = column(
        &db.client,
        "SELECT to_regclass('auth.token_janitor_migrations') IS NULL",
    )
    .await;
    assert_eq!(moved, vec![true]);
    assert_eq!(planted_effect(&db, &dbo).await, (0, false));
    drop(db);
    drop_roles(&[&dbo]).await;
}

/// Issue 28 #2: exact-type overloads (`public.unnest(text[])` beats
/// `pg_catalog.unnest(anyarray)`) and an operator, with public first on the
/// database's path.
#[tokio::test]
async fn exact_type_overloads_on_the_databases_path_never_run() {
    let db = TestDb::empty().await;
    let dbo = database_owner(&db).await;
    let body = planted_body(&dbo);
    let overloads = [
        ("unnest(text[])", "SETOF text"),
        ("unnest(bigint[])", "SETOF bigint"),
        ("unnest(integer[])", "SETOF integer"),
        ("to_regclass(text)", "regclass"),
        ("to_regnamespace(text)", "regnamespace"),
        ("current_setting(text)", "text"),
        ("set_config(text, text, boolean)", "text"),
        ("pg_try_advisory_lock(bigint)", "boolean"),
        ("pg_advisory_unlock(bigint)", "boolean"),
        ("hashtext(text)", "integer"),
        ("now()", "timestamp with time zone"),
        ("format(text, VARIADIC text[])", "text"),
        ("text_eq(text, text)", "boolean"),
    ]
    .map(|(signature, result)| {
        format!(
            "CREATE FUNCTION public.{signature} RETURNS {result} LANGUAGE plpgsql AS $$
             BEGIN {body} RAISE EXCEPTION 'planted {signature} ran'; END $$;"
        )
    })
    .concat();
    db.client
        .batch_execute(&format!(
            "SET ROLE {dbo};
             {overloads}
             CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.text_eq);
             ALTER DATABASE {} SET search_path = public, pg_catalog;
             RESET ROLE;",
            db.name()
        ))
        .await
        .unwrap();
    let url = cli_url(&db.url, "postgres");
    for args in [
        &["migrate", "--no-schedule"][..],
        &["verify", "--no-schedule"],
        &["status"],
        &["status", "--exact"],
    ] {
        run_cli_ok(args, &url).await;
    }
    let mut unpinned = db.connect_unpinned().await;
    migrate(&mut unpinned, &no_schedule()).await.unwrap();
    for exact in [false, true] {
        status(&unpinned, &Schema::default(), exact, 5)
            .await
            .unwrap();
    }
    let options = VerifyOptions {
        schedule: None,
        ..VerifyOptions::default()
    };
    let report = verify(&db.url, &options).await;
    assert!(report.ok, "{report}");
    assert_eq!(planted_effect(&db, &dbo).await, (0, false));
    drop(unpinned);
    drop(db);
    drop_roles(&[&dbo]).await;
}

/// An application that runs refinery itself keeps its history in
/// public.refinery_schema_history (refinery's default). Returns its rows.
async fn app_history(db: &TestDb) -> Vec<String> {
    let mut app = db.connect_unpinned().await;
    let migrations = [
        (
            "V1__app_users",
            "CREATE TABLE public.app_users (id int PRIMARY KEY)",
        ),
        (
            "V2__app_orders",
            "CREATE TABLE public.app_orders (id int PRIMARY KEY)",
        ),
    ]
    .map(|(name, sql)| refinery::Migration::unapplied(name, sql).unwrap());
    refinery::Runner::new(&migrations)
        .run_async(&mut app)
        .await
        .unwrap();
    history_rows(db, "public.refinery_schema_history").await
}

#[tokio::test]
async fn an_applications_own_refinery_history_is_left_as_it_is() {
    let mut db = TestDb::empty().await;
    let rows = app_history(&db).await;
    assert_eq!(rows.len(), 2);
    migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        history_rows(&db, "public.refinery_schema_history").await,
        rows
    );
    assert_eq!(recorded_versions(&db).await, embedded_versions());
}

/// The same where the application's history belongs to its own role and
/// token-janitor deploys as another, no superuser (a managed service):
/// migrate neither reads nor locks a table it may not touch.
#[tokio::test]
async fn an_applications_history_of_another_role_does_not_stop_a_deploying_role() {
    let db = TestDb::empty().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let [app, deployer, app_role, monitor_role] =
        ["app", "deployer", "app_role", "monitor_role"].map(|r| format!("tj_{r}_{suffix}"));
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {app} LOGIN; CREATE ROLE {deployer} LOGIN;
             CREATE ROLE {app_role} NOLOGIN; CREATE ROLE {monitor_role} NOLOGIN;
             GRANT CREATE ON DATABASE {db} TO {deployer};
             GRANT CREATE ON SCHEMA public TO {app};",
            db = db.name()
        ))
        .await
        .unwrap();
    let mut app_client = connect_config(&db.unpinned_config(Some(&app))).await;
    let migration =
        refinery::Migration::unapplied("V1__app_users", "CREATE TABLE public.app_users (id int)")
            .unwrap();
    refinery::Runner::new(&[migration])
        .run_async(&mut app_client)
        .await
        .unwrap();
    let rows = history_rows(&db, "public.refinery_schema_history").await;
    run_cli_ok(
        &[
            "migrate",
            "--no-schedule",
            "--app-role",
            &app_role,
            "--monitor-role",
            &monitor_role,
        ],
        &cli_url(&db.url, &deployer),
    )
    .await;
    assert_eq!(
        history_rows(&db, "public.refinery_schema_history").await,
        rows
    );
    assert_eq!(recorded_versions(&db).await, embedded_versions());
    drop(app_client);
    drop(db);
    drop_roles(&[&app, &deployer, &app_role, &monitor_role]).await;
}

#[tokio::test]
async fn a_history_shared_with_the_application_is_split() {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 6).await;
    let ours = history_rows(&db, "public.refinery_schema_history").await;
    db.client
        .batch_execute(
            "INSERT INTO public.refinery_schema_history VALUES
                 (100, 'app_users', '2025-11-02T10:00:00Z', '1234567890'),
                 (101, 'app_orders', '2025-11-03T10:00:00Z', '987654321')",
        )
        .await
        .unwrap();
    let theirs: Vec<String> = history_rows(&db, "public.refinery_schema_history")
        .await
        .into_iter()
        .filter(|row| !ours.contains(row))
        .collect();
    assert_eq!(theirs.len(), 2);
    migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        history_rows(&db, "public.refinery_schema_history").await,
        theirs,
        "the application's rows stay, and only they"
    );
    assert_eq!(
        history_rows(&db, "auth.token_janitor_migrations").await[..ours.len()],
        ours,
        "token-janitor's rows moved with their applied_on and checksum (the later migrations follow them)"
    );
}

#[tokio::test]
async fn a_history_of_token_janitors_rows_only_is_moved_and_dropped() {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 6).await;
    let ours = history_rows(&db, "public.refinery_schema_history").await;
    migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        history_rows(&db, "auth.token_janitor_migrations").await[..ours.len()],
        ours
    );
    let left: Vec<bool> = column(
        &db.client,
        "SELECT to_regclass('public.refinery_schema_history') IS NULL",
    )
    .await;
    assert_eq!(left, vec![true], "the emptied table is dropped");
}
