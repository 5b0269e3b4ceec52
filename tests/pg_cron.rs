//! End to end: pg_cron itself runs the cleanup job on a one-minute schedule,
//! as the owner role.

mod common;

use std::time::Duration;

use common::*;
use token_janitor::operator::{MigrateOptions, migrate};

#[tokio::test]
async fn pg_cron_runs_the_cleanup_on_schedule() {
    let mut cron = CronDb::fresh().await;
    let options = MigrateOptions {
        schedule: ScheduleChoice::Set("* * * * *".into()),
        ..MigrateOptions::default()
    };
    let report = migrate(&mut cron.client, &options).await.unwrap();
    let job_id = report.job_id.unwrap();
    let c = &cron.client;

    // 100 rotated rows due now, and their live successors: rotated rows
    // are kept with token_history on.
    set_token_history(c, true).await;
    for i in 0..100 {
        let s = issue(
            c,
            "cron",
            &format!("{i}-0"),
            30 * DAY,
            std::time::SystemTime::now() - Duration::from_secs(3 * 3600),
        )
        .await;
        let outcome = rotate(
            c,
            s,
            0,
            &format!("{i}-0"),
            &format!("{i}-1"),
            30 * DAY,
            std::time::SystemTime::now() - Duration::from_secs(2 * 3600),
        )
        .await;
        assert_eq!(outcome, "rotated");
    }
    // A job_run_details row older than history_retention, to be pruned.
    c.execute(
        "INSERT INTO cron.job_run_details (jobid, runid, job_pid, database, username, command, status, start_time, end_time)
         SELECT jobid, 424242, 0, database, username, command, 'succeeded',
                now() - interval '20 days', now() - interval '20 days'
         FROM cron.job WHERE jobid = $1",
        &[&job_id],
    )
    .await
    .unwrap();

    let status: String = poll("pg_cron to run the job", Duration::from_secs(150), || async {
        c.query_opt(
            "SELECT status FROM cron.job_run_details
             WHERE jobid = $1 AND runid <> 424242 AND status IN ('succeeded', 'failed') ORDER BY start_time LIMIT 1",
            &[&job_id],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
    })
    .await;
    assert_eq!(status, "succeeded");
    let runner: Vec<String> = column(
        c,
        &format!(
            "SELECT d.username || ' superuser=' || r.rolsuper FROM cron.job_run_details d
             JOIN pg_roles r ON r.rolname = d.username WHERE d.jobid = {job_id} AND d.runid <> 424242"
        ),
    )
    .await;
    assert_eq!(
        runner[0], "token_janitor_owner superuser=false",
        "the job runs as the owner role, not as the superuser that ran migrate"
    );

    let run = c
        .query_one(
            "SELECT status, rotated_deleted FROM auth.cleanup_runs ORDER BY id LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((run.get::<_, &str>(0), run.get::<_, i64>(1)), ("ok", 100));
    assert_eq!(counts(c).await, (100, 100));
    let old: i64 = c
        .query_one(
            "SELECT count(*) FROM cron.job_run_details WHERE runid = 424242",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        old, 0,
        "job_run_details older than history_retention are pruned"
    );
}

/// pg_cron connects a job to the port the server had when the job was
/// scheduled, and its upsert keeps it: a job from before a move to another
/// port (or a restore into another server) fails every run with
/// "connection failed". migrate schedules such a job afresh.
#[tokio::test]
async fn migrate_reschedules_a_job_that_connects_to_an_old_port() {
    let mut cron = CronDb::fresh().await;
    let options = MigrateOptions::default();
    let first = migrate(&mut cron.client, &options)
        .await
        .unwrap()
        .job_id
        .unwrap();
    cron.client
        .execute(
            "UPDATE cron.job SET nodeport = 1 WHERE jobid = $1",
            &[&first],
        )
        .await
        .unwrap();
    let again = migrate(&mut cron.client, &options)
        .await
        .unwrap()
        .job_id
        .unwrap();
    let jobs: Vec<String> = column(
        &cron.client,
        "SELECT jobid || ':' || (nodeport = current_setting('port')::int) FROM cron.job
         WHERE command = 'CALL auth.run_token_cleanup()' ORDER BY jobid",
    )
    .await;
    assert_ne!(again, first);
    assert_eq!(jobs, [format!("{again}:true")]);
    // A job on the right port is kept as it is.
    let kept = migrate(&mut cron.client, &options)
        .await
        .unwrap()
        .job_id
        .unwrap();
    assert_eq!(kept, again);
}
