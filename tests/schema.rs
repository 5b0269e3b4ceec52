//! `--schema NAME`: token-janitor installed in a schema of the deployer's
//! choosing, beside someone else's `auth` (Supabase's `auth.sessions` and
//! `auth.refresh_tokens`) or beside another install of its own; each install
//! purges only its own rows, and its roles are its own.

mod common;

use common::*;
use token_janitor::operator::{MigrateOptions, VerifyOptions, migrate, status, verify};
use token_janitor::testing::{SCHEMA_NAME_RULE, job_name};
use token_janitor::{Rotation, Schema, TokenStore};
use tokio_postgres::Client;

fn tj() -> Schema {
    Schema::new("tj").unwrap()
}

/// Migrate options for schema `tj`, without pg_cron.
fn in_tj() -> MigrateOptions {
    MigrateOptions {
        schema: tj(),
        ..no_schedule()
    }
}

/// A schema `auth` as another auth server leaves it: its own tables of the
/// names token-janitor uses, owned by its own role, with a row each.
const FOREIGN_AUTH: &str = "
    DO $$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'tj_test_foreign_auth_admin') THEN
            CREATE ROLE tj_test_foreign_auth_admin NOLOGIN;
        END IF;
    END $$;
    CREATE SCHEMA auth AUTHORIZATION tj_test_foreign_auth_admin;
    CREATE TABLE auth.sessions (id uuid PRIMARY KEY, user_id uuid, factor_id uuid);
    CREATE TABLE auth.refresh_tokens (id bigserial PRIMARY KEY, token varchar(255),
                                      session_id uuid REFERENCES auth.sessions (id));
    CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql AS 'SELECT NULL::uuid';
    INSERT INTO auth.sessions VALUES ('00000000-0000-0000-0000-000000000001', NULL, NULL);
    INSERT INTO auth.refresh_tokens (token, session_id)
        VALUES ('theirs', '00000000-0000-0000-0000-000000000001');
    ALTER TABLE auth.sessions OWNER TO tj_test_foreign_auth_admin;
    ALTER TABLE auth.refresh_tokens OWNER TO tj_test_foreign_auth_admin;
    ALTER FUNCTION auth.uid() OWNER TO tj_test_foreign_auth_admin;";

/// Everything in schema `schema`: each relation with its owner and columns,
/// each routine with its owner, and the row counts of the foreign tables.
async fn snapshot(client: &Client, schema: &str) -> Vec<String> {
    client
        .query(
            "SELECT c.relname || ' ' || pg_get_userbyid(c.relowner) || ' ' ||
                    coalesce((SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod), ',' ORDER BY a.attnum)
                              FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0), '')
             FROM pg_class c WHERE c.relnamespace = $1::text::regnamespace
             UNION ALL
             SELECT p.oid::regprocedure::text || ' ' || pg_get_userbyid(p.proowner)
             FROM pg_proc p WHERE p.pronamespace = $1::text::regnamespace
             ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A session in `schema` whose token expired ten days ago (due for the
/// purge), seeded through the clock-driven form as the superuser.
async fn expired_session(client: &Client, schema: &str, user: &str) {
    client
        .execute(
            &format!(
                "SELECT {schema}.issue_token(p_user_id => $1::text, p_token_hash => sha256(convert_to($1::text, 'UTF8')),
                        p_ttl => interval '1 hour', p_now => now() - interval '10 days')"
            ),
            &[&user],
        )
        .await
        .unwrap();
}

/// Sessions of `user` in `schema`.
async fn sessions_of(client: &Client, schema: &str, user: &str) -> i64 {
    client
        .query_one(
            &format!("SELECT count(*) FROM {schema}.sessions WHERE user_id = $1"),
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn an_install_in_its_own_schema_leaves_a_foreign_auth_alone() {
    let mut db = TestDb::empty().await;
    db.client.batch_execute(FOREIGN_AUTH).await.unwrap();
    let before = snapshot(&db.client, "auth").await;

    let report = migrate(&mut db.client, &in_tj()).await.unwrap();
    assert_eq!(report.owner, "tj_owner");
    assert_eq!(snapshot(&db.client, "auth").await, before);
    let theirs: i64 = db
        .client
        .query_one(
            "SELECT (SELECT count(*) FROM auth.sessions) + (SELECT count(*) FROM auth.refresh_tokens)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(theirs, 2);
    let owners = column::<String>(
        &db.client,
        "SELECT DISTINCT pg_get_userbyid(relowner)::text FROM pg_class
         WHERE relnamespace = 'tj'::regnamespace
         UNION SELECT pg_get_userbyid(nspowner)::text FROM pg_namespace WHERE nspname = 'tj'",
    )
    .await;
    assert_eq!(owners, ["tj_owner"]);
    assert!(
        snapshot(&db.client, "tj")
            .await
            .iter()
            .any(|o| o.starts_with("token_janitor_migrations tj_owner ")),
        "the history is the owner role's, in schema tj"
    );

    // The application role of schema tj, through TokenStore::with_schema.
    let (login, url, app) = member_of(&db, "tj_app").await;
    let store = TokenStore::new(url.pool(2)).with_schema(tj());
    let first = store.issue("alice").await.unwrap();
    let Rotation::Rotated(second) = store.rotate(first.token.expose()).await.unwrap() else {
        panic!("a live token rotates");
    };
    assert_eq!(second.user_id, "alice");
    match store.rotate(first.token.expose()).await.unwrap() {
        Rotation::Rotated(again) => assert_eq!(
            again.token.expose(),
            second.token.expose(),
            "within the reuse grace the predecessor gets the same successor"
        ),
        other => panic!("the predecessor within the grace: {other:?}"),
    }
    assert_eq!(
        store
            .revoke_session(second.session_id, token_janitor::RevokeReason::Logout)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store.rotate(second.token.expose()).await.unwrap(),
        Rotation::Revoked
    ));
    // The default store looks in schema auth, which is not token-janitor's.
    assert!(
        TokenStore::new(url.pool(1)).issue("alice").await.is_err(),
        "auth.issue_token does not exist here"
    );
    drop(store);
    drop_member(&db, &login, app).await;

    // The scheduled entry point of schema tj purges tj's rows.
    expired_session(&db.client, "tj", "bob").await;
    db.client
        .batch_execute("CALL tj.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(sessions_of(&db.client, "tj", "bob").await, 0);
    let run = db
        .client
        .query_one(
            "SELECT status, sessions_deleted FROM tj.cleanup_runs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((run.get::<_, &str>(0), run.get::<_, i64>(1)), ("ok", 1));
    assert_eq!(snapshot(&db.client, "auth").await, before);

    // verify, library and command line, and status.
    let report = verify(
        &db.url,
        &VerifyOptions {
            schema: tj(),
            schedule: None,
            ..VerifyOptions::default()
        },
    )
    .await;
    assert!(report.ok, "{report}");
    let out = run_cli_ok(
        &["verify", "--schema", "tj", "--no-schedule"],
        &cli_url(&db.url, "postgres"),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("CALL tj.run_token_cleanup()"), "{text}");
    // Without --schema, verify looks for the install in auth and says so.
    let out = run_cli(&["verify", "--no-schedule"], &cli_url(&db.url, "postgres")).await;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("auth.token_janitor_migrations"), "{text}");

    let status = status(&db.client, &tj(), true, 5).await.unwrap();
    assert_eq!(status.schema, "tj");
    assert!(
        status
            .relations
            .iter()
            .any(|r| r.name == "tj.refresh_tokens")
    );
    assert!(!status.relations.iter().any(|r| r.name.starts_with("auth.")));
    assert_eq!(status.runs.len(), 1);
    let out = run_cli_ok(
        &["status", "--schema", "tj", "--format", "prometheus"],
        &cli_url(&db.url, "postgres"),
    )
    .await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("relation=\"tj.refresh_tokens\""), "{text}");
}

#[tokio::test]
async fn two_installs_in_one_database_each_purge_their_own_rows() {
    let mut db = TestDb::migrated().await;
    migrate(&mut db.client, &in_tj()).await.unwrap();
    for schema in ["auth", "tj"] {
        expired_session(&db.client, schema, "carol").await;
    }

    db.client
        .batch_execute("CALL tj.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(sessions_of(&db.client, "tj", "carol").await, 0);
    assert_eq!(sessions_of(&db.client, "auth", "carol").await, 1);

    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(sessions_of(&db.client, "auth", "carol").await, 0);

    // Each install's roles reach only its own schema.
    let (login, _url, app) = member_of(&db, "tj_app").await;
    all_denied(
        &app,
        &[
            "SELECT auth.issue_token(p_user_id => 'x', p_token_hash => sha256('x'), p_ttl => interval '1 hour')",
            "SELECT count(*) FROM tj.refresh_tokens",
        ],
    )
    .await;
    drop_member(&db, &login, app).await;
    let (login, _url, app) = member_of(&db, "token_janitor_app").await;
    all_denied(
        &app,
        &["SELECT tj.issue_token(p_user_id => 'x', p_token_hash => sha256('x'), p_ttl => interval '1 hour')"],
    )
    .await;
    drop_member(&db, &login, app).await;

    for schema in [Schema::default(), tj()] {
        let report = verify(
            &db.url,
            &VerifyOptions {
                schema,
                schedule: None,
                ..VerifyOptions::default()
            },
        )
        .await;
        assert!(report.ok, "{report}");
    }
}

#[tokio::test]
async fn a_schema_name_that_is_not_a_plain_lowercase_identifier_is_refused() {
    for bad in [
        "Auth",
        "tj-x",
        "tj;drop",
        "public",
        "pg_tj",
        "information_schema",
        "",
    ] {
        let err = Schema::new(bad).unwrap_err().to_string();
        assert!(
            err.contains(SCHEMA_NAME_RULE) && err.contains("MigrateOptions::schema"),
            "{bad:?}: {err}"
        );
    }
    let db = TestDb::empty().await;
    for command in ["migrate", "verify", "status"] {
        let out = run_cli(
            &[command, "--schema", "public"],
            &cli_url(&db.url, "postgres"),
        )
        .await;
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr);
        // The command line names its flag where the library names its option.
        assert!(
            text.contains("invalid schema name 'public'")
                && text.contains(SCHEMA_NAME_RULE)
                && text.contains("(--schema)")
                && !text.contains("MigrateOptions"),
            "{command}: {text}"
        );
    }
    let nothing: Vec<String> = column(
        &db.client,
        "SELECT nspname::text FROM pg_namespace WHERE nspname IN ('auth', 'tj')",
    )
    .await;
    assert!(nothing.is_empty(), "{nothing:?}");
}

#[tokio::test]
async fn migrating_a_schema_twice_changes_nothing_the_second_time() {
    let mut db = TestDb::empty().await;
    let first = migrate(&mut db.client, &in_tj()).await.unwrap();
    assert_eq!(
        first.applied.len(),
        token_janitor::testing::embedded_migrations(&tj()).len()
    );
    let before = snapshot(&db.client, "tj").await;
    let second = migrate(&mut db.client, &in_tj()).await.unwrap();
    assert!(second.applied.is_empty(), "{:?}", second.applied);
    assert!(
        second.indexes_built.is_empty(),
        "{:?}",
        second.indexes_built
    );
    assert_eq!(snapshot(&db.client, "tj").await, before);
    run_cli_ok(
        &["migrate", "--schema", "tj", "--no-schedule"],
        &cli_url(&db.url, "postgres"),
    )
    .await;
    assert_eq!(snapshot(&db.client, "tj").await, before);
    // The checksums of schema tj's history are its own, and verify
    // compares them with the same rewritten migrations.
    let recorded: Vec<String> = column(
        &db.client,
        "SELECT checksum::text FROM tj.token_janitor_migrations ORDER BY version",
    )
    .await;
    let expected: Vec<String> = token_janitor::testing::embedded_migrations(&tj())
        .iter()
        .map(|m| m.checksum.to_string())
        .collect();
    assert_eq!(recorded, expected);
    assert_ne!(
        expected,
        token_janitor::testing::embedded_migrations(&Schema::default())
            .iter()
            .map(|m| m.checksum.to_string())
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_job_of_a_schema_calls_into_it_and_carries_its_name() {
    let mut cron = CronDb::fresh().await;
    let database = cron.url.dbname();
    migrate(&mut cron.client, &MigrateOptions::default())
        .await
        .unwrap();
    let report = migrate(
        &mut cron.client,
        &MigrateOptions {
            schema: tj(),
            schedule: ScheduleChoice::Set("*/7 * * * *".into()),
            ..MigrateOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(report.job_name, Some(job_name(&database, "tj")));
    assert!(job_name(&database, "tj").ends_with(".tj"));
    let jobs: Vec<String> = column(
        &cron.client,
        "SELECT jobname || ' | ' || command || ' | ' || schedule || ' | ' || username
         FROM cron.job ORDER BY jobname",
    )
    .await;
    assert_eq!(
        jobs,
        [
            format!(
                "{} | CALL auth.run_token_cleanup() | */5 * * * * | token_janitor_owner",
                job_name(&database, "auth")
            ),
            format!(
                "{} | CALL tj.run_token_cleanup() | */7 * * * * | tj_owner",
                job_name(&database, "tj")
            ),
        ]
    );
    let report = verify(
        &cron.url,
        &VerifyOptions {
            schema: tj(),
            schedule: Some("*/7 * * * *".into()),
            ..VerifyOptions::default()
        },
    )
    .await;
    assert!(report.ok, "{report}");
    let job = report.checks.iter().find(|c| c.name == "job").unwrap();
    assert!(
        job.evidence.contains("CALL tj.run_token_cleanup()"),
        "{report}"
    );
}
