//! One pg_cron job per database: every database on a server gets its own
//! cleanup job on the shared pg_cron, named after its database and schema and
//! found by database and command; migrating one database never touches
//! another's job; an earlier release's `refresh-token-cleanup` job is
//! replaced, not duplicated; a job that does not read back as scheduled fails
//! migrate.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use token_janitor::testing::job_name;

/// The job name of releases before one job per database.
const LEGACY_JOB_NAME: &str = "refresh-token-cleanup";
use token_janitor::operator::{MigrateOptions, migrate};
use tokio_postgres::Client;

/// Every cleanup job of pg_cron's database as `name database schedule`,
/// with its command checked.
async fn jobs(cron: &Client) -> Vec<String> {
    cron.query(
        "SELECT jobname::text, database, schedule, command FROM cron.job ORDER BY jobname, database",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|r| {
        assert_eq!(r.get::<_, &str>(3), "CALL auth.run_token_cleanup()");
        format!(
            "{} {} {}",
            r.get::<_, &str>(0),
            r.get::<_, &str>(1),
            r.get::<_, &str>(2)
        )
    })
    .collect()
}

fn job(db: &TestDb, schedule: &str) -> String {
    format!("{} {} {schedule}", job_name(db.name(), "auth"), db.name())
}

async fn migrate_with(db: &mut TestDb, schedule: &str) {
    let options = MigrateOptions {
        schedule: ScheduleChoice::Set(schedule.into()),
        ..reaching_cron(&db.url)
    };
    let report = migrate(&mut db.client, &options).await.unwrap();
    assert_eq!(report.job_name, Some(job_name(db.name(), "auth")));
    assert_eq!(report.schedule.as_deref(), Some(schedule));
}

/// Waits for a cleanup run that pg_cron started in `db` after `since`.
async fn cleanup_ran(db: &TestDb, since: SystemTime) {
    let status: String = poll(
        &format!("pg_cron to run the cleanup in {}", db.name()),
        Duration::from_secs(150),
        || async {
            db.client
                .query_opt(
                    "SELECT status FROM auth.cleanup_runs
                     WHERE started_at >= $1 AND status <> 'running' ORDER BY started_at LIMIT 1",
                    &[&since],
                )
                .await
                .unwrap()
                .map(|r| r.get(0))
        },
    )
    .await;
    assert_eq!(status, "ok", "{}", db.name());
}

#[tokio::test]
async fn two_databases_on_one_server_each_get_their_own_job_and_cleanup() {
    let cron = CronDb::fresh().await;
    let (mut a, mut b) = (TestDb::empty().await, TestDb::empty().await);

    migrate_with(&mut a, "*/7 * * * *").await;
    migrate_with(&mut b, "*/9 * * * *").await;
    let mut expected = vec![job(&a, "*/7 * * * *"), job(&b, "*/9 * * * *")];
    expected.sort();
    assert_eq!(
        jobs(&cron.client).await,
        expected,
        "b's migrate left a's job alone"
    );

    // Again, each with another schedule (both every minute, to see them run).
    let since: SystemTime = cron
        .client
        .query_one("SELECT now()", &[])
        .await
        .unwrap()
        .get(0);
    migrate_with(&mut a, "* * * * *").await;
    migrate_with(&mut b, "*/1 * * * *").await;
    let mut expected = vec![job(&a, "* * * * *"), job(&b, "*/1 * * * *")];
    expected.sort();
    assert_eq!(jobs(&cron.client).await, expected);

    cleanup_ran(&a, since).await;
    cleanup_ran(&b, since).await;
}

#[tokio::test]
async fn an_earlier_releases_job_is_replaced_and_another_databases_is_left_alone() {
    let cron = CronDb::fresh().await;
    let (mut a, b) = (TestDb::empty().await, TestDb::empty().await);
    migrate_with(&mut a, "*/7 * * * *").await;
    // As an earlier release left them: a's job under the old name, paused by
    // an operator, and the old name's job of another role serving database b.
    cron.client
        .batch_execute(&format!(
            "UPDATE cron.job SET jobname = '{LEGACY_JOB_NAME}', active = false;
             SELECT cron.schedule_in_database('{LEGACY_JOB_NAME}', '*/3 * * * *',
                 'CALL auth.run_token_cleanup()', '{}', 'postgres')",
            b.name()
        ))
        .await
        .unwrap();
    let others: Vec<i64> = column(
        &cron.client,
        &format!("SELECT jobid FROM cron.job WHERE database = '{}'", b.name()),
    )
    .await;

    // The library's default keeps the schedule the old job had.
    let report = migrate(&mut a.client, &reaching_cron(&a.url))
        .await
        .unwrap();
    assert_eq!(report.schedule.as_deref(), Some("*/7 * * * *"));
    let mut expected = vec![
        job(&a, "*/7 * * * *"),
        format!("{LEGACY_JOB_NAME} {} */3 * * * *", b.name()),
    ];
    expected.sort();
    assert_eq!(jobs(&cron.client).await, expected);
    let kept: Vec<i64> = column(
        &cron.client,
        &format!("SELECT jobid FROM cron.job WHERE database = '{}'", b.name()),
    )
    .await;
    assert_eq!(kept, others, "b's job is the same job");
    let paused: Vec<bool> = column(
        &cron.client,
        &format!(
            "SELECT active FROM cron.job WHERE database = '{}'",
            a.name()
        ),
    )
    .await;
    assert_eq!(paused, vec![false], "the operator's pause carries over");
}

#[tokio::test]
async fn a_job_of_this_databases_name_that_runs_elsewhere_is_refused_before_anything_changes() {
    let cron = CronDb::fresh().await;
    let (mut a, b) = (TestDb::empty().await, TestDb::empty().await);
    cron.client
        .batch_execute(&format!(
            "CREATE EXTENSION pg_cron;
             SELECT cron.schedule_in_database('{}', '*/3 * * * *', 'SELECT 1', '{}')",
            job_name(a.name(), "auth"),
            b.name()
        ))
        .await
        .unwrap();
    let err = migrate(&mut a.client, &reaching_cron(&a.url))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, token_janitor::operator::Error::PgCronJobElsewhere { other, database, .. }
            if other == b.name() && database == a.name()),
        "{err}"
    );
    let schemas: Vec<String> = column(
        &a.client,
        "SELECT nspname::text FROM pg_namespace WHERE nspname = 'auth'",
    )
    .await;
    assert!(schemas.is_empty(), "a refused migrate changes nothing");
}

#[tokio::test]
async fn a_job_that_does_not_read_back_as_scheduled_fails_migrate() {
    let cron = CronDb::fresh().await;
    let mut a = TestDb::empty().await;
    // Stands for a pg_cron that records the job otherwise than asked.
    cron.client
        .batch_execute(
            "CREATE EXTENSION pg_cron;
             CREATE FUNCTION public.tj_misplace_job() RETURNS trigger LANGUAGE plpgsql
                 AS $$ BEGIN NEW.database := 'postgres'; RETURN NEW; END $$;
             CREATE TRIGGER tj_misplace_job BEFORE INSERT OR UPDATE ON cron.job
                 FOR EACH ROW EXECUTE FUNCTION public.tj_misplace_job();",
        )
        .await
        .unwrap();
    let err = migrate(&mut a.client, &reaching_cron(&a.url))
        .await
        .unwrap_err();
    cron.client
        .batch_execute("DROP FUNCTION public.tj_misplace_job() CASCADE")
        .await
        .unwrap();
    assert!(
        matches!(&err, token_janitor::operator::Error::JobNotAsScheduled { database, found, .. }
            if database == a.name() && found.contains("in database 'postgres'")),
        "{err}"
    );
    assert!(
        err.to_string().contains("this database has no cleanup"),
        "{err}"
    );
}
