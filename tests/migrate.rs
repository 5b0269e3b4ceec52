//! `migrate`: idempotent, safe to run concurrently, clear about pg_cron and
//! bad input, and leaves the database usable after a failure.

mod common;

use common::*;
use token_janitor::operator::{MigrateOptions, migrate};
use token_janitor::testing::embedded_migrations;

/// Every object in schema auth with its definition, for before/after comparisons.
async fn schema_fingerprint(client: &tokio_postgres::Client) -> Vec<String> {
    column(
        client,
        "SELECT c.relname || ':' || coalesce(pg_get_indexdef(c.oid), c.relkind::text)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'auth'
             UNION ALL
             SELECT p.proname || ':' || md5(pg_get_functiondef(p.oid))
             FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'auth'
             ORDER BY 1",
    )
    .await
}

#[tokio::test]
async fn migrate_twice_is_a_no_op() {
    let mut db = TestDb::empty().await;
    let first = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        first.applied.len(),
        embedded_migrations(&token_janitor::Schema::default()).len()
    );
    assert_eq!(first.indexes_built.len(), 5);
    let s = issue(&db.client, "u", "g0", DAY, at(0)).await;
    let before = schema_fingerprint(&db.client).await;

    let second = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert!(
        second.applied.is_empty()
            && second.indexes_built.is_empty()
            && second.indexes_rebuilt.is_empty()
    );
    assert_eq!(schema_fingerprint(&db.client).await, before);
    assert_eq!(counts(&db.client).await, (1, 1));
    assert_eq!(
        rotate(&db.client, s, 0, "g0", "g1", DAY, at(60)).await,
        "rotated"
    );
}

#[tokio::test]
async fn two_migrate_processes_at_once_both_succeed() {
    let db = TestDb::empty().await;
    let url = cli_url(&db.url, "postgres");
    let (a, b) = tokio::join!(
        run_cli(&["migrate", "--no-schedule"], &url),
        run_cli(&["migrate", "--no-schedule"], &url)
    );
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let applied: i64 = db
        .client
        .query_one("SELECT count(*) FROM auth.token_janitor_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        applied,
        embedded_migrations(&token_janitor::Schema::default()).len() as i64
    );
    let invalid: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
             JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = 'auth' AND NOT i.indisvalid",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(invalid, 0);
}

#[tokio::test]
async fn without_pg_cron_here_migrate_fails_naming_it_and_changes_nothing() {
    let mut db = TestDb::empty().await;
    let err = migrate(&mut db.client, &MigrateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, token_janitor::operator::Error::PgCronWrongDatabase { configured, current }
            if configured == &server().dbname() && current == db.name()),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("pg_cron")
            && message.contains("cron.database_name")
            && message.contains("ScheduleChoice::Off")
            && !message.contains("--"),
        "the library names its options, not the command line's flags: {message}"
    );
    let schemas: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_namespace WHERE nspname = 'auth'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(schemas, 0, "a refused migrate changes nothing");

    // The command line reaches pg_cron's database by itself (tests/managed.rs);
    // --no-schedule leaves pg_cron alone.
    let url = cli_url(&db.url, "postgres");
    let out = run_cli(&["migrate", "--no-schedule"], &url).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("CALL auth.run_token_cleanup()"));
}

#[tokio::test]
async fn a_role_that_cannot_create_pg_cron_is_told_so() {
    let cron = CronDb::fresh().await;
    let role = format!("tj_plain_{}", uuid::Uuid::new_v4().simple());
    cron.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; GRANT CREATE ON DATABASE {} TO {role}; GRANT CREATE ON SCHEMA public TO {role}",
            cron.url.dbname()
        ))
        .await
        .unwrap();
    let mut config = cron.url.config().clone();
    config.user(&role);
    let (mut client, conn) = config.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let err = migrate(&mut client, &MigrateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, token_janitor::operator::Error::PgCronNotSuperuser { role: r, .. } if r == &role),
        "{err}"
    );
    assert!(err.to_string().contains("CREATE EXTENSION pg_cron"));
    drop(client);
    cron.client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {} FROM {role}; REVOKE ALL ON SCHEMA public FROM {role}; DROP ROLE {role}",
            cron.url.dbname()
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn the_schedule_is_upserted_with_the_pinned_command() {
    let mut cron = CronDb::fresh().await;
    let report = migrate(&mut cron.client, &MigrateOptions::default())
        .await
        .unwrap();
    let job = "SELECT jobid, schedule, command, active, username FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'";
    let rows = cron.client.query(job, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(Some(rows[0].get::<_, i64>(0)), report.job_id);
    assert_eq!(
        rows[0].get::<_, &str>(1),
        "*/5 * * * *",
        "the default schedule"
    );
    assert_eq!(rows[0].get::<_, &str>(2), "CALL auth.run_token_cleanup()");
    assert!(rows[0].get::<_, bool>(3));
    assert_eq!(
        rows[0].get::<_, &str>(4),
        "token_janitor_owner",
        "migrate ran as a superuser and scheduled the job for the owner role"
    );

    let options = MigrateOptions {
        schedule: ScheduleChoice::Set("17 3 * * *".into()),
        ..MigrateOptions::default()
    };
    migrate(&mut cron.client, &options).await.unwrap();
    let rows = cron.client.query(job, &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "the job is upserted, not duplicated");
    assert_eq!(rows[0].get::<_, &str>(1), "17 3 * * *");
}

/// An application's start-up migrate (the library's default) keeps what an
/// operator chose: the schedule set with the CLI, and the policy.
#[tokio::test]
async fn the_default_migrate_keeps_the_operators_schedule_and_policy() {
    let mut cron = CronDb::fresh().await;
    let url = cli_url(&cron.url, "postgres");
    run_cli_ok(&["migrate", "--schedule", "* * * * *"], &url).await;
    cron.client
        .batch_execute("UPDATE auth.cleanup_policy SET batch_size = 123")
        .await
        .unwrap();
    let report = migrate(&mut cron.client, &MigrateOptions::default())
        .await
        .unwrap();
    assert_eq!(report.schedule.as_deref(), Some("* * * * *"));
    // The CLI without --schedule keeps it too.
    run_cli_ok(&["migrate"], &url).await;
    let kept: Vec<String> = column(
        &cron.client,
        "SELECT schedule || ' ' || (SELECT batch_size FROM auth.cleanup_policy)
         FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
    )
    .await;
    assert_eq!(kept, vec!["* * * * * 123"]);
}

#[rstest::rstest]
#[case::seconds("30 seconds", "pg_cron 1.5")]
#[case::fields("* * * *", "4 fields")]
#[case::characters("*/5 * * * ;", "characters")]
#[case::range("99 * * * *", "invalid schedule")]
#[tokio::test]
async fn bad_schedules_are_refused_with_the_reason(#[case] cron_expr: &str, #[case] says: &str) {
    let mut cron = CronDb::fresh().await;
    let options = MigrateOptions {
        schedule: ScheduleChoice::Set(cron_expr.into()),
        ..MigrateOptions::default()
    };
    let err = migrate(&mut cron.client, &options).await.unwrap_err();
    assert!(
        matches!(err, token_janitor::operator::Error::InvalidSchedule { .. }),
        "{err}"
    );
    assert!(err.to_string().contains(says), "{err}");
}

#[tokio::test]
async fn a_wrong_url_names_host_and_port_without_panicking() {
    let out = run_cli(&["migrate"], "postgres://postgres@127.0.0.1:1/nowhere").await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("127.0.0.1:1"), "{stderr}");
    assert!(stderr.contains("cannot connect"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let out = run_cli(&["migrate"], "postgres://user:hunter2@[::1:bad/x").await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid database URL") && !stderr.contains("hunter2"),
        "{stderr}"
    );

    let out = tokio::process::Command::new(BIN)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DATABASE_URL"));
}

#[tokio::test]
async fn an_invalid_leftover_index_is_dropped_and_rebuilt() {
    let mut db = TestDb::migrated().await;
    db.client
        .batch_execute(
            "UPDATE pg_index SET indisvalid = false
             WHERE indexrelid = 'auth.refresh_tokens_rotated_purge_idx'::regclass",
        )
        .await
        .unwrap();
    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        report.indexes_rebuilt,
        vec!["refresh_tokens_rotated_purge_idx".to_string()]
    );
    let valid: bool = db
        .client
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'auth.refresh_tokens_rotated_purge_idx'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(valid);
}

/// An index of a name sql/indexes.sql defines but of another definition
/// (an earlier build's, or someone's edit) is rebuilt to the definition,
/// every purge statement still bounded by it afterwards; a leftover of an
/// interrupted rebuild goes; the next migrate changes nothing.
#[tokio::test]
async fn an_index_of_another_definition_is_rebuilt_to_its_own() {
    let mut db = TestDb::migrated().await;
    let names = [
        "sessions_expiry_floor_idx",
        "refresh_tokens_revoked_purge_idx",
    ];
    let wanted = index_definitions(&db.client, &names).await;
    db.client
        .batch_execute(
            "DROP INDEX auth.sessions_expiry_floor_idx;
             CREATE INDEX sessions_expiry_floor_idx ON auth.sessions (expiry_floor);
             DROP INDEX auth.refresh_tokens_revoked_purge_idx;
             CREATE INDEX refresh_tokens_revoked_purge_idx
                 ON auth.refresh_tokens (revoked_at, session_id, generation);
             CREATE INDEX sessions_revoked_at_idx_next ON auth.sessions (revoked_at);",
        )
        .await
        .unwrap();
    assert_ne!(index_definitions(&db.client, &names).await, wanted);
    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        (
            report.indexes_built,
            report.indexes_rebuilt,
            report.indexes_retired
        ),
        (
            vec![],
            vec![
                "refresh_tokens_revoked_purge_idx".to_string(),
                "sessions_expiry_floor_idx".to_string()
            ],
            vec!["sessions_revoked_at_idx_next".to_string()]
        )
    );
    assert_eq!(index_definitions(&db.client, &names).await, wanted);
    assert_eq!(
        column::<i64>(
            &db.client,
            "SELECT count(*) FROM pg_class WHERE relname LIKE '%\\_next' AND relkind = 'i'"
        )
        .await,
        [0]
    );
    let before = schema_fingerprint(&db.client).await;
    let again = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert!(again.indexes_built.is_empty() && again.indexes_rebuilt.is_empty());
    assert_eq!(schema_fingerprint(&db.client).await, before);
}

/// pg_get_indexdef of each of `names` in schema auth.
async fn index_definitions(client: &tokio_postgres::Client, names: &[&str]) -> Vec<String> {
    let mut definitions = Vec::new();
    for name in names {
        definitions.push(
            column::<String>(
                client,
                &format!("SELECT pg_get_indexdef('auth.{name}'::regclass)"),
            )
            .await
            .remove(0),
        );
    }
    definitions
}

#[tokio::test]
async fn a_failed_migration_keeps_what_applied_and_the_next_run_finishes() {
    let mut db = TestDb::empty().await;
    // An event trigger that refuses to create auth.cleanup_runs makes V2
    // fail after V1 has applied (an existing table of that name would be
    // refused before anything changes, see below).
    db.client
        .batch_execute(
            "CREATE FUNCTION public.no_cleanup_runs() RETURNS event_trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF EXISTS (SELECT 1 FROM pg_event_trigger_ddl_commands()
                            WHERE object_identity = 'auth.cleanup_runs') THEN
                     RAISE EXCEPTION 'sabotage: no auth.cleanup_runs';
                 END IF;
             END $$;
             CREATE EVENT TRIGGER no_cleanup_runs ON ddl_command_end
                 WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION public.no_cleanup_runs()",
        )
        .await
        .unwrap();
    let err = migrate(&mut db.client, &no_schedule()).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("V2") && message.contains("cleanup_policy_and_runs"),
        "{message}"
    );
    let applied: Vec<i32> = column(
        &db.client,
        "SELECT version FROM auth.token_janitor_migrations ORDER BY version",
    )
    .await;
    assert_eq!(applied, vec![1]);
    let policy_exists: bool = db
        .client
        .query_one("SELECT to_regclass('auth.cleanup_policy') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!policy_exists, "V2 rolled back as a whole");

    db.client
        .batch_execute("DROP EVENT TRIGGER no_cleanup_runs")
        .await
        .unwrap();
    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        report.applied,
        vec![
            "V2__cleanup_policy_and_runs",
            "V3__smaller_default_batch",
            "V4__trustworthy_tokens",
            "V5__purge_position",
            "V6__pace_by_default",
            "V7__owner_locks",
            "V8__security_event_repeats",
            "V9__session_binding_and_lifetime",
            "V10__token_in_place",
            "V11__deleted_by_kind",
            "V12__session_expiry_floor"
        ]
    );
}

/// An install migrated up to V2: V3 moves a batch_size still at the old
/// default to the new one and keeps one chosen by hand; new rows default to
/// the new value either way.
#[rstest::rstest]
#[case::old_default(50000, 10000)]
#[case::chosen_by_hand(20000, 20000)]
#[tokio::test]
async fn v3_moves_the_old_default_batch_size_and_keeps_a_chosen_one(
    #[case] before: i32,
    #[case] after: i32,
) {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 2).await;
    db.client
        .batch_execute(&format!(
            "UPDATE auth.cleanup_policy SET batch_size = {before}"
        ))
        .await
        .unwrap();
    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(report.applied[0], "V3__smaller_default_batch");
    let batch_size: Vec<i32> =
        column(&db.client, "SELECT batch_size FROM auth.cleanup_policy").await;
    assert_eq!(batch_size, vec![after]);
    let default: Vec<String> = column(
        &db.client,
        "SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d
         JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum
         WHERE d.adrelid = 'auth.cleanup_policy'::regclass AND a.attname = 'batch_size'",
    )
    .await;
    assert_eq!(default, vec!["10000"]);
}

#[tokio::test]
async fn a_divergent_migration_is_refused() {
    let mut db = TestDb::migrated().await;
    db.client
        .batch_execute("UPDATE auth.token_janitor_migrations SET checksum = '1' WHERE version = 1")
        .await
        .unwrap();
    let err = migrate(&mut db.client, &no_schedule()).await.unwrap_err();
    assert!(
        matches!(err, token_janitor::operator::Error::Migration(_)),
        "{err}"
    );
    assert!(err.to_string().contains("V1"), "{err}");
}

/// Everything in schema auth that is not the owner role's, with its owner,
/// grants, comment and definition, and every row-level-security policy.
async fn foreign_fingerprint(client: &tokio_postgres::Client) -> Vec<String> {
    column(
        client,
        "SELECT kind || ' ' || name || ' owner=' || owner || ' acl=' || coalesce(acl, '')
                || ' comment=' || coalesce(comment, '') || ' def=' || coalesce(def, '')
         FROM (
             SELECT 'relation' AS kind, c.relname::text AS name, pg_get_userbyid(c.relowner)::text AS owner,
                    c.relacl::text AS acl, obj_description(c.oid, 'pg_class') AS comment, c.relkind::text AS def
             FROM pg_class c WHERE c.relnamespace = 'auth'::regnamespace
             UNION ALL
             SELECT 'routine', p.oid::regprocedure::text, pg_get_userbyid(p.proowner)::text, p.proacl::text,
                    obj_description(p.oid, 'pg_proc'), md5(pg_get_functiondef(p.oid))
             FROM pg_proc p WHERE p.pronamespace = 'auth'::regnamespace
             UNION ALL
             SELECT 'policy', polname::text, '', '', '', pg_get_expr(polqual, polrelid) FROM pg_policy
             UNION ALL
             SELECT 'schema', nspname::text, pg_get_userbyid(nspowner)::text, '',
                    obj_description(oid, 'pg_namespace'), '' FROM pg_namespace WHERE nspname = 'auth'
         ) x WHERE owner <> 'token_janitor_owner' ORDER BY 1",
    )
    .await
}

/// The grants on schema auth, one per entry.
async fn schema_grants(client: &tokio_postgres::Client) -> Vec<String> {
    column(
        client,
        "SELECT a::text FROM pg_namespace n, unnest(n.nspacl) a WHERE n.nspname = 'auth' ORDER BY 1",
    )
    .await
}

/// Invariant 9: in a database whose schema auth belongs to another role and
/// holds that role's auth.uid() and auth.role() (Supabase's, PostgREST's
/// examples), a table, grants, comments, a policy that calls auth.uid(), and
/// a function of the database's superuser, migrate installs beside them, and
/// they survive it, and a second one, untouched.
#[tokio::test]
async fn foreign_objects_in_auth_survive_every_migrate() {
    let mut db = TestDb::empty().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (admin, anon) = (format!("tj_admin_{suffix}"), format!("tj_anon_{suffix}"));
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {admin} NOLOGIN; CREATE ROLE {anon} NOLOGIN;
             CREATE SCHEMA auth AUTHORIZATION {admin};
             GRANT USAGE ON SCHEMA auth TO {anon};
             COMMENT ON SCHEMA auth IS 'their auth schema';
             SET ROLE {admin};
             CREATE TABLE auth.users (id uuid PRIMARY KEY, email text);
             CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE
                 AS $$ SELECT nullif(current_setting('request.jwt.claim.sub', true), '')::uuid $$;
             CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE
                 AS $$ SELECT nullif(current_setting('request.jwt.claim.role', true), '')::text $$;
             GRANT SELECT ON auth.users TO {anon};
             GRANT EXECUTE ON FUNCTION auth.uid(), auth.role() TO {anon};
             COMMENT ON FUNCTION auth.uid() IS 'the user id of the request';
             COMMENT ON TABLE auth.users IS 'their users';
             RESET ROLE;
             CREATE FUNCTION auth.email() RETURNS text LANGUAGE sql STABLE
                 AS $$ SELECT current_setting('request.jwt.claim.email', true) $$;
             COMMENT ON FUNCTION auth.email() IS 'the superuser''s own';
             CREATE TABLE public.notes (author uuid, body text);
             ALTER TABLE public.notes ENABLE ROW LEVEL SECURITY;
             CREATE POLICY notes_by_author ON public.notes USING (author = auth.uid());"
        ))
        .await
        .unwrap();
    let before = foreign_fingerprint(&db.client).await;
    let grants = schema_grants(&db.client).await;
    assert_eq!(before.len(), 7, "{before:#?}");

    for _ in 0..2 {
        migrate(&mut db.client, &no_schedule()).await.unwrap();
        assert_eq!(foreign_fingerprint(&db.client).await, before);
        let now = schema_grants(&db.client).await;
        assert!(
            grants.iter().all(|g| now.contains(g)),
            "{grants:?} in {now:?}"
        );
    }
    let s = issue(&db.client, "u", "g0", DAY, at(0)).await;
    assert_eq!(
        rotate(&db.client, s, 0, "g0", "g1", DAY, at(60)).await,
        "rotated"
    );
    let usable: Vec<bool> = column(
        &db.client,
        "SELECT has_schema_privilege(r, 'auth', 'USAGE') FROM unnest(ARRAY[
             'token_janitor_owner', 'token_janitor_app', 'token_janitor_monitor']) r",
    )
    .await;
    assert_eq!(usable, vec![true; 3]);
    drop(db);
    drop_roles(&[&admin, &anon]).await;
}

/// Invariant 9: a table token-janitor needs that exists with another shape
/// (Supabase's auth.sessions and auth.refresh_tokens), or a routine of one
/// of its names (even a superuser's), is refused before anything changes,
/// naming it and what to do.
#[tokio::test]
async fn a_table_in_the_way_is_refused_before_anything_changes() {
    let mut db = TestDb::empty().await;
    db.client
        .batch_execute(
            "CREATE SCHEMA auth;
             CREATE TABLE auth.sessions (id uuid PRIMARY KEY, user_id uuid NOT NULL,
                 created_at timestamptz, updated_at timestamptz, factor_id uuid, aal text, not_after timestamptz);
             CREATE TABLE auth.refresh_tokens (id bigserial PRIMARY KEY, token varchar(255), user_id varchar(255),
                 revoked boolean, created_at timestamptz, updated_at timestamptz, parent varchar(255),
                 session_id uuid REFERENCES auth.sessions (id) ON DELETE CASCADE);
             CREATE FUNCTION auth.list_sessions(p_user_id uuid) RETURNS SETOF auth.sessions
                 LANGUAGE sql AS $$ SELECT * FROM auth.sessions WHERE user_id = p_user_id $$;",
        )
        .await
        .unwrap();
    let before = schema_fingerprint(&db.client).await;
    let err = migrate(&mut db.client, &no_schedule()).await.unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(err, token_janitor::operator::Error::Conflict(_)),
        "{message}"
    );
    for says in [
        "migrate changed nothing",
        "auth.sessions already exists but token-janitor did not create it",
        "auth.refresh_tokens already exists",
        "routine auth.list_sessions(uuid) belongs to role postgres",
        "install token-janitor in another database",
    ] {
        assert!(message.contains(says), "{says}: {message}");
    }
    assert_eq!(schema_fingerprint(&db.client).await, before);
    let history: Vec<bool> = column(
        &db.client,
        "SELECT to_regclass('auth.token_janitor_migrations') IS NOT NULL",
    )
    .await;
    assert_eq!(history, vec![false]);

    let out = run_cli(&["migrate", "--no-schedule"], &cli_url(&db.url, "postgres")).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth.sessions already exists"));
}

/// Once installed, a token-janitor table given to another role, or a routine
/// of one of its names that someone (even a superuser) added, is refused
/// before anything changes.
#[tokio::test]
async fn a_table_or_routine_of_another_owner_is_refused_before_anything_changes() {
    let mut db = TestDb::migrated().await;
    let other = format!("tj_other_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {other} NOLOGIN; GRANT CREATE ON SCHEMA auth TO {other};
             ALTER TABLE auth.cleanup_runs OWNER TO {other};
             CREATE FUNCTION auth.list_sessions(p_user_id uuid) RETURNS bigint
                 LANGUAGE sql AS $$ SELECT 0::bigint $$;"
        ))
        .await
        .unwrap();
    let before = schema_fingerprint(&db.client).await;
    let err = migrate(&mut db.client, &no_schedule()).await.unwrap_err();
    let message = err.to_string();
    for says in [
        format!(
            "table auth.cleanup_runs belongs to role {other}, not to the owner role token_janitor_owner"
        ),
        "routine auth.list_sessions(uuid) belongs to role postgres".to_string(),
    ] {
        assert!(message.contains(&says), "{says}: {message}");
    }
    assert_eq!(schema_fingerprint(&db.client).await, before);
    drop(db);
    drop_roles(&[&other]).await;
}

/// The owner role is configurable and must not be a superuser; a superuser
/// is refused before anything changes.
#[tokio::test]
async fn the_owner_role_is_configurable_and_never_a_superuser() {
    let mut db = TestDb::empty().await;
    let options = MigrateOptions {
        owner_role: Some("postgres".into()),
        ..no_schedule()
    };
    let err = migrate(&mut db.client, &options).await.unwrap_err();
    assert!(
        err.to_string().contains("role postgres is a superuser"),
        "{err}"
    );
    let schemas: Vec<i64> = column(
        &db.client,
        "SELECT count(*) FROM pg_namespace WHERE nspname = 'auth'",
    )
    .await;
    assert_eq!(schemas, vec![0]);

    let owner = format!("tj_owner_{}", uuid::Uuid::new_v4().simple());
    let options = MigrateOptions {
        owner_role: Some(owner.clone()),
        ..no_schedule()
    };
    migrate(&mut db.client, &options).await.unwrap();
    let owners = owners_in_auth(&db.client).await;
    assert_eq!(owners, vec![owner.clone()]);
    let login: Vec<bool> = column(
        &db.client,
        &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{owner}'"),
    )
    .await;
    assert_eq!(login, vec![false], "NOLOGIN when no job runs as it");
    drop(db);
    drop_roles(&[&owner]).await;
}

/// The upgrade from a release without the owner role: everything belonged to
/// the superuser that ran migrate, the job ran as it and the monitor could
/// read the sessions. migrate gives it all to the owner role, moves the job
/// to it and takes the monitor's reads back.
#[tokio::test]
async fn an_install_from_before_the_owner_role_passes_to_it() {
    let mut cron = CronDb::fresh().await;
    migrate(&mut cron.client, &MigrateOptions::default())
        .await
        .unwrap();
    cron.client
        .batch_execute(
            "REASSIGN OWNED BY token_janitor_owner TO postgres;
             UPDATE cron.job SET username = 'postgres' WHERE command = 'CALL auth.run_token_cleanup()';
             GRANT SELECT ON auth.sessions TO token_janitor_monitor;
             -- Those releases named their internal routines without the
             -- leading underscore.
             ALTER FUNCTION auth._apply_grants(text, text) RENAME TO apply_grants;
             ALTER FUNCTION auth._check_ttl(interval, interval, timestamptz) RENAME TO check_ttl;",
        )
        .await
        .unwrap();
    migrate(&mut cron.client, &MigrateOptions::default())
        .await
        .unwrap();
    let owners = owners_in_auth(&cron.client).await;
    assert_eq!(owners, vec!["token_janitor_owner"]);
    let retired: Vec<String> = column(
        &cron.client,
        "SELECT proname::text FROM pg_proc
         WHERE pronamespace = 'auth'::regnamespace AND proname IN ('apply_grants', 'check_ttl')",
    )
    .await;
    assert!(retired.is_empty(), "{retired:?}");
    let jobs: Vec<String> = column(
        &cron.client,
        "SELECT username FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
    )
    .await;
    assert_eq!(jobs, vec!["token_janitor_owner"]);
    let reads: Vec<bool> = column(
        &cron.client,
        "SELECT has_table_privilege('token_janitor_monitor', 'auth.sessions', 'SELECT')",
    )
    .await;
    assert_eq!(reads, vec![false]);
}

/// A managed service: the deploying role is no superuser (the provider's
/// admin created pg_cron and lets it use schema cron). It owns everything
/// migrate creates and schedules the job as itself.
#[tokio::test]
async fn a_deploying_role_that_is_no_superuser_owns_the_install_and_its_job() {
    let cron = CronDb::fresh().await;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let (deployer, app, monitor) = (
        format!("tj_deployer_{suffix}"),
        format!("tj_app_{suffix}"),
        format!("tj_monitor_{suffix}"),
    );
    cron.client
        .batch_execute(&format!(
            "CREATE EXTENSION pg_cron;
             CREATE ROLE {deployer} LOGIN; CREATE ROLE {app} NOLOGIN; CREATE ROLE {monitor} NOLOGIN;
             GRANT CREATE ON DATABASE {} TO {deployer};
             GRANT CREATE ON SCHEMA public TO {deployer};
             GRANT USAGE ON SCHEMA cron TO {deployer};",
            cron.url.dbname()
        ))
        .await
        .unwrap();
    let url = cli_url(&cron.url, &deployer);
    let out = run_cli_ok(
        &[
            "migrate",
            "--app-role",
            &app,
            "--monitor-role",
            &monitor,
            "--schedule",
            "17 3 * * *",
        ],
        &url,
    )
    .await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "runs `CALL auth.run_token_cleanup()` in database {} on '17 3 * * *' (UTC) as role \
             {deployer}",
            cron.url.dbname()
        )),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(owners_in_auth(&cron.client).await, vec![deployer.clone()]);
    let jobs: Vec<String> = column(
        &cron.client,
        "SELECT username || ' ' || schedule FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
    )
    .await;
    assert_eq!(jobs, vec![format!("{deployer} 17 3 * * *")]);

    let out = run_cli(&["migrate", "--owner-role", "token_janitor_owner"], &url).await;
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "role {deployer} is not a superuser, so it can deploy only as the owner role itself"
        )),
        "{stderr}"
    );

    cron.client
        .batch_execute(&format!(
            "SELECT cron.unschedule(jobid) FROM cron.job;
             DROP OWNED BY {deployer}, {app}, {monitor}; DROP ROLE {deployer}, {app}, {monitor}"
        ))
        .await
        .unwrap();
}

/// A schema auth an administrator (a superuser) made before the first
/// install is theirs: it keeps its owner through every migrate, and
/// token-janitor's objects in it are the owner role's.
#[tokio::test]
async fn a_schema_auth_made_before_the_install_keeps_its_owner() {
    let mut db = TestDb::empty().await;
    db.client.batch_execute("CREATE SCHEMA auth").await.unwrap();
    for _ in 0..2 {
        migrate(&mut db.client, &no_schedule()).await.unwrap();
    }
    let schema_owner: Vec<String> = column(
        &db.client,
        "SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'auth'",
    )
    .await;
    assert_eq!(schema_owner, vec!["postgres"]);
    let owners = owners_in_auth(&db.client).await;
    assert_eq!(owners.len(), 2, "{owners:?}");
    assert!(owners.contains(&"token_janitor_owner".to_string()));
}

/// Invariant 9: migrate drops and recreates only the routines of its record.
/// A routine the owner role created in `auth` under another name (as a
/// deploying role that is the owner does on a managed service) survives the
/// next migrate; before, every routine of the owner role there was dropped.
#[tokio::test]
async fn a_routine_of_the_owner_role_outside_the_record_survives_migrate() {
    let mut db = TestDb::migrated().await;
    db.client
        .batch_execute(
            "SET ROLE token_janitor_owner;
             CREATE FUNCTION auth.app_helper() RETURNS int LANGUAGE sql AS 'SELECT 42';
             RESET ROLE;",
        )
        .await
        .unwrap();
    migrate(&mut db.client, &no_schedule()).await.unwrap();
    let answer: i32 = db
        .client
        .query_one("SELECT auth.app_helper()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(answer, 42);
}
