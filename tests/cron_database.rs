//! migrate and pg_cron's database: from a database that is not
//! cron.database_name the job is scheduled from pg_cron's database with
//! cron.schedule_in_database; what cannot work, there or here, is refused
//! before anything changes.

mod common;

use common::*;
use token_janitor::DatabaseUrl;
use token_janitor::operator::{
    CronDatabase, MigrateOptions, Outcome, VerifyOptions, migrate, verify,
};

/// A refused migrate changes nothing: not even schema auth exists.
async fn assert_no_auth_schema(client: &tokio_postgres::Client) {
    let schemas: Vec<String> = column(
        client,
        "SELECT nspname::text FROM pg_namespace WHERE nspname = 'auth'",
    )
    .await;
    assert!(schemas.is_empty(), "a refused migrate changes nothing");
}

#[tokio::test]
async fn a_superuser_creates_pg_cron_in_its_database_and_schedules_the_job_to_run_here() {
    let cron = CronDb::fresh().await;
    let mut db = TestDb::empty().await;
    let options = MigrateOptions {
        schedule: ScheduleChoice::Set("*/7 * * * *".into()),
        ..reaching_cron(&db.url)
    };
    let report = migrate(&mut db.client, &options).await.unwrap();
    let job = cron
        .client
        .query_one(
            "SELECT jobid, database, schedule, command FROM cron.job
             WHERE command = 'CALL auth.run_token_cleanup()'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(Some(job.get::<_, i64>(0)), report.job_id);
    assert_eq!(
        (
            job.get::<_, &str>(1),
            job.get::<_, &str>(2),
            job.get::<_, &str>(3)
        ),
        (db.name(), "*/7 * * * *", "CALL auth.run_token_cleanup()")
    );

    let verified = verify(
        &db.url,
        &VerifyOptions {
            schedule: Some("*/7 * * * *".into()),
            cron_database: Some(CronDatabase::Like(db.url.clone())),
            ..VerifyOptions::default()
        },
    )
    .await;
    let job_check = verified.checks.iter().find(|c| c.name == "job").unwrap();
    assert_eq!(job_check.outcome, Outcome::Pass, "{verified}");

    // Run twice: the job is upserted, not duplicated.
    migrate(&mut db.client, &options).await.unwrap();
    let jobs: Vec<i64> = column(
        &cron.client,
        "SELECT jobid FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
    )
    .await;
    assert_eq!(jobs, vec![report.job_id.unwrap()]);
}

#[tokio::test]
async fn a_role_that_cannot_create_pg_cron_in_its_database_is_told_so_before_anything_changes() {
    let cron = CronDb::fresh().await;
    let db = TestDb::empty().await;
    let role = format!("tj_owner_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN; ALTER DATABASE {} OWNER TO {role}",
            db.name()
        ))
        .await
        .unwrap();
    let url = DatabaseUrl::parse(&cli_url(&db.url, &role)).unwrap();
    let (client, err) = refused_migrate(&url).await;
    assert!(
        matches!(&err, token_janitor::operator::Error::PgCronNotSuperuser { role: r, database }
            if r == &role && database == &cron.url.dbname()),
        "{err}"
    );
    for fix in [
        "rds_superuser",
        "cloudsql.enable_pg_cron",
        "azure.extensions",
    ] {
        assert!(err.to_string().contains(fix), "{fix} missing from: {err}");
    }
    assert_no_auth_schema(&client).await;
    drop(client);
    drop(db);
    cron.client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_cron_database_url_that_is_not_cron_database_name_is_refused() {
    let mut db = TestDb::empty().await;
    let options = MigrateOptions {
        cron_database: Some(CronDatabase::At(db.url.with_dbname("postgres"))),
        ..MigrateOptions::default()
    };
    let err = migrate(&mut db.client, &options).await.unwrap_err();
    assert!(
        matches!(&err, token_janitor::operator::Error::PgCronWrongDatabase { configured, current }
            if configured == &server().dbname() && current == "postgres"),
        "{err}"
    );
}

#[tokio::test]
async fn a_role_without_usage_on_cron_is_refused_in_the_cron_database_too() {
    let cron = CronDb::fresh().await;
    let role = format!("tj_nocron_{}", uuid::Uuid::new_v4().simple());
    cron.client
        .batch_execute(&format!(
            "CREATE EXTENSION pg_cron; CREATE ROLE {role} LOGIN;
             GRANT CREATE ON DATABASE {db} TO {role}; GRANT CREATE ON SCHEMA public TO {role}",
            db = cron.url.dbname()
        ))
        .await
        .unwrap();
    let mut client = DatabaseUrl::parse(&cli_url(&cron.url, &role))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let err = migrate(&mut client, &MigrateOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, token_janitor::operator::Error::PgCronNoPermission { role: r, missing, .. }
            if r == &role && missing == "no USAGE on schema cron"),
        "{err}"
    );
    assert_no_auth_schema(&client).await;
    drop(client);
    cron.client
        .batch_execute(&format!(
            "REVOKE ALL ON DATABASE {db} FROM {role}; REVOKE ALL ON SCHEMA public FROM {role};
             DROP ROLE {role}",
            db = cron.url.dbname()
        ))
        .await
        .unwrap();
}
