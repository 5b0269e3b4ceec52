//! `migrate`: idempotent, safe to run concurrently, clear about pg_cron and
//! bad input, and leaves the database usable after a failure.

mod common;

use common::*;
use token_janitor::migrate::embedded_migrations;
use token_janitor::{Error, MigrateOptions, migrate, schedule};

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
    assert_eq!(first.applied.len(), embedded_migrations().len());
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
        .query_one("SELECT count(*) FROM refinery_schema_history", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(applied, embedded_migrations().len() as i64);
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
        matches!(&err, Error::PgCronWrongDatabase { configured, current }
            if configured == &server().dbname() && current == db.name()),
        "{err}"
    );
    let message = err.to_string();
    assert!(
        message.contains("pg_cron")
            && message.contains("cron.database_name")
            && message.contains("--no-schedule")
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

    let url = cli_url(&db.url, "postgres");
    let out = run_cli(&["migrate"], &url).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pg_cron can only be created in database")
    );
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
        matches!(&err, Error::PgCronNotSuperuser { role: r } if r == &role),
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
    let job = "SELECT jobid, schedule, command, active FROM cron.job WHERE jobname = 'refresh-token-cleanup'";
    let rows = cron.client.query(job, &[]).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(Some(rows[0].get::<_, i64>(0)), report.job_id);
    assert_eq!(rows[0].get::<_, &str>(1), schedule::DEFAULT_SCHEDULE);
    assert_eq!(rows[0].get::<_, &str>(2), "CALL auth.run_token_cleanup()");
    assert!(rows[0].get::<_, bool>(3));

    let options = MigrateOptions {
        schedule: Some("17 3 * * *".into()),
        ..MigrateOptions::default()
    };
    migrate(&mut cron.client, &options).await.unwrap();
    let rows = cron.client.query(job, &[]).await.unwrap();
    assert_eq!(rows.len(), 1, "the job is upserted, not duplicated");
    assert_eq!(rows[0].get::<_, &str>(1), "17 3 * * *");
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
        schedule: Some(cron_expr.into()),
        ..MigrateOptions::default()
    };
    let err = migrate(&mut cron.client, &options).await.unwrap_err();
    assert!(matches!(err, Error::InvalidSchedule { .. }), "{err}");
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

#[tokio::test]
async fn a_failed_migration_keeps_what_applied_and_the_next_run_finishes() {
    let mut db = TestDb::empty().await;
    // A conflicting table makes V2 fail after V1 has applied.
    db.client
        .batch_execute("CREATE SCHEMA auth; CREATE TABLE auth.cleanup_runs (x int)")
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
        "SELECT version FROM refinery_schema_history ORDER BY version",
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
        .batch_execute("DROP TABLE auth.cleanup_runs")
        .await
        .unwrap();
    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        report.applied,
        vec![
            "V2__cleanup_policy_and_runs",
            "V3__smaller_default_batch",
            "V4__trustworthy_tokens",
            "V7__purge_position"
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
        .batch_execute("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 1")
        .await
        .unwrap();
    let err = migrate(&mut db.client, &no_schedule()).await.unwrap_err();
    assert!(matches!(err, Error::Migration(_)), "{err}");
    assert!(err.to_string().contains("V1"), "{err}");
}
