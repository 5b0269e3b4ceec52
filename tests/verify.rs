//! `verify` passes on a healthy install, fails naming the check for each way
//! an install can break, never changes data; `status` output parses.

mod common;

use common::*;
use token_janitor::DatabaseUrl;
use token_janitor::operator::{MigrateOptions, migrate};
use token_janitor::operator::{Outcome, Report, VerifyOptions, verify};

fn no_cron() -> VerifyOptions {
    VerifyOptions {
        schedule: None,
        ..VerifyOptions::default()
    }
}

fn outcome(report: &Report, name: &str) -> Outcome {
    report
        .checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no check {name} in {report}"))
        .outcome
}

/// Asserts that verify failed on exactly `names`.
fn assert_fails(report: &Report, names: &[&str]) {
    assert!(!report.ok, "verify passed:\n{report}");
    let failed: Vec<&str> = report
        .checks
        .iter()
        .filter(|c| c.outcome == Outcome::Fail)
        .map(|c| c.name)
        .collect();
    assert_eq!(failed, names, "{report}");
}

/// Row counts of every table verify could touch.
async fn row_counts(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let tables: Vec<String> = column(
        client,
        "SELECT format('%I.%I', schemaname, relname) FROM pg_stat_user_tables
             WHERE schemaname IN ('auth', 'cron', 'public') ORDER BY 1",
    )
    .await;
    let mut counts = Vec::new();
    for table in tables {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        counts.push((table, n));
    }
    counts
}

#[tokio::test]
async fn a_fresh_install_passes_with_warnings_for_what_has_not_run_yet() {
    let mut cron = CronDb::fresh().await;
    migrate(&mut cron.client, &MigrateOptions::default())
        .await
        .unwrap();
    let report = verify(&cron.url, &VerifyOptions::default()).await;
    assert!(report.ok, "{report}");
    assert_eq!(outcome(&report, "last-job-run"), Outcome::Warn);
    assert_eq!(outcome(&report, "recent-run"), Outcome::Warn);
    assert_eq!(outcome(&report, "self-test"), Outcome::Pass);
    assert_eq!(outcome(&report, "plans"), Outcome::Pass);
    assert_eq!(outcome(&report, "job"), Outcome::Pass);

    // After a run, everything passes.
    cron.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let report = verify(&cron.url, &VerifyOptions::default()).await;
    assert_eq!(outcome(&report, "recent-run"), Outcome::Pass, "{report}");
}

#[rstest::rstest]
#[case::unscheduled(
    "SELECT cron.unschedule(jobid) FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
    "job"
)]
#[case::inactive(
    "SELECT cron.alter_job(jobid, active => false) FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
    "job"
)]
#[case::wrong_command(
    "UPDATE cron.job SET command = 'SET x = 1; CALL auth.run_token_cleanup()' WHERE command = 'CALL auth.run_token_cleanup()'",
    "job"
)]
// Dated an hour ahead, so it stays the job's last run even when the real
// schedule fires during the test (runid from its sequence for the same reason).
#[case::last_run_failed(
    "INSERT INTO cron.job_run_details (jobid, job_pid, database, username, command, status, return_message, start_time, end_time)
     SELECT jobid, 0, current_database(), username, command, 'failed', 'ERROR: boom',
            now() + interval '1 hour', now() + interval '1 hour'
     FROM cron.job WHERE command = 'CALL auth.run_token_cleanup()'",
    "last-job-run"
)]
#[tokio::test]
async fn schedule_breakage_fails_its_check(#[case] sabotage: &str, #[case] check: &str) {
    let mut cron = CronDb::fresh().await;
    migrate(&mut cron.client, &MigrateOptions::default())
        .await
        .unwrap();
    cron.client.batch_execute(sabotage).await.unwrap();
    let report = verify(&cron.url, &VerifyOptions::default()).await;
    assert_fails(&report, &[check]);
    assert!(
        report
            .checks
            .iter()
            .all(|c| c.outcome == Outcome::Pass || c.remedy.is_some())
    );
}

/// verify says what migrate would about pg_cron (schedule::check_pg_cron), in
/// the same words.
#[tokio::test]
async fn without_the_pg_cron_extension_verify_fails_naming_it() {
    let mut cron = CronDb::fresh().await;
    let unscheduled = MigrateOptions {
        schedule: ScheduleChoice::Off,
        ..MigrateOptions::default()
    };
    migrate(&mut cron.client, &unscheduled).await.unwrap();
    let report = verify(&cron.url, &VerifyOptions::default()).await;
    assert_fails(&report, &["pg_cron", "job"]);
    let pg_cron = report.checks.iter().find(|c| c.name == "pg_cron").unwrap();
    assert!(
        pg_cron.evidence.starts_with(&format!(
            "pg_cron is not installed in database '{}'",
            cron.url.dbname()
        )),
        "{report}"
    );
}

#[rstest::rstest]
#[case::dropped_index("DROP INDEX auth.refresh_tokens_rotated_purge_idx", &["indexes", "plans"])]
#[case::invalid_index(
    "UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'auth.refresh_tokens_revoked_purge_idx'::regclass",
    &["indexes", "plans"]
)]
#[case::superuser_definer("ALTER FUNCTION auth.self_test() OWNER TO postgres", &["owner"])]
#[case::divergent_migration("UPDATE auth.token_janitor_migrations SET checksum = '42' WHERE version = 2", &["migrations"])]
#[case::failed_run(
    "INSERT INTO auth.cleanup_runs (started_at, finished_at, status, error)
     VALUES (now(), now(), 'failed', 'XX000: boom')",
    &["recent-run"]
)]
#[case::stuck_run(
    "INSERT INTO auth.cleanup_runs (started_at, status) VALUES (now() - interval '1 hour', 'running')",
    &["unfinished"]
)]
#[case::purge_deletes_live_tokens(
    "CREATE OR REPLACE FUNCTION auth.purge_refresh_tokens(p_now timestamptz DEFAULT now(), p_limit integer DEFAULT NULL)
     RETURNS TABLE (expired bigint, revoked bigint, rotated bigint, sessions bigint, by_kind jsonb)
     LANGUAGE plpgsql SET search_path = pg_catalog AS $$
     DECLARE n bigint;
     BEGIN
         DELETE FROM auth.refresh_tokens WHERE expires_at < p_now + interval '1 year';
         GET DIAGNOSTICS n = ROW_COUNT;
         RETURN QUERY SELECT n, 0::bigint, 0::bigint, 0::bigint, jsonb_build_object('expired', n);
     END $$",
    &["self-test"]
)]
#[tokio::test]
async fn installation_breakage_fails_its_check(#[case] sabotage: &str, #[case] checks: &[&str]) {
    let db = TestDb::migrated().await;
    let report = verify(&db.url, &no_cron()).await;
    assert!(report.ok, "{report}");
    db.client.batch_execute(sabotage).await.unwrap();
    assert_fails(&verify(&db.url, &no_cron()).await, checks);
}

#[tokio::test]
async fn verify_changes_no_data() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_families(c, 200, 5).await;
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    seed_families(c, 50, 3).await;
    let before = row_counts(c).await;
    let report = verify(&db.url, &no_cron()).await;
    assert!(report.ok, "{report}");
    assert_eq!(row_counts(c).await, before);
    // The self-test leaves no trace even inside a transaction that commits.
    c.batch_execute("BEGIN; SELECT * FROM auth.self_test(); COMMIT;")
        .await
        .unwrap();
    assert_eq!(row_counts(c).await, before);
}

#[tokio::test]
async fn no_schema_no_server_and_no_privileges_fail_clearly() {
    let db = TestDb::empty().await;
    let report = verify(&db.url, &no_cron()).await;
    assert_fails(&report, &["migrations"]);
    assert!(report.to_string().contains("run token-janitor migrate"));

    let nowhere = DatabaseUrl::parse("postgres://postgres@127.0.0.1:1/x").unwrap();
    let report = verify(&nowhere, &no_cron()).await;
    assert_fails(&report, &["connection"]);
    assert!(report.to_string().contains("127.0.0.1:1"));

    let migrated = TestDb::migrated().await;
    let role = format!("tj_nobody_{}", uuid::Uuid::new_v4().simple());
    migrated
        .client
        .batch_execute(&format!("CREATE ROLE {role} LOGIN"))
        .await
        .unwrap();
    let url = cli_url(&migrated.url, &role);
    let out = run_cli(&["verify", "--no-schedule"], &url).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL migrations") && stdout.contains("permission denied"),
        "{stdout}"
    );
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    migrated
        .client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn verify_json_and_exit_codes() {
    let db = TestDb::migrated().await;
    let url = cli_url(&db.url, "postgres");
    let out = run_cli(&["verify", "--no-schedule", "--json"], &url).await;
    assert_eq!(out.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert!(
        json["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "self-test")
    );

    db.client
        .batch_execute("DROP INDEX auth.refresh_tokens_expired_rows_idx")
        .await
        .unwrap();
    let out = run_cli(&["verify", "--no-schedule"], &url).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAIL indexes"));

    let out = run_cli(&["verify", "--backlog-warn", "-5"], &url).await;
    assert_eq!(out.status.code(), Some(2), "out-of-range flags exit 2");
}

#[tokio::test]
async fn status_parses_as_json_and_prometheus() {
    let db = TestDb::migrated().await;
    seed_families(&db.client, 100, 4).await;
    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let url = cli_url(&db.url, "postgres");

    let out = run_cli_ok(&["status", "--json"], &url).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let live = json["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "live")
        .unwrap();
    assert_eq!(live["rows"], 100);
    assert_eq!(json["runs"][0]["status"], "ok");
    assert_eq!(json["runs"][0]["rotated"], 300);

    let out = run_cli(&["status", "--format", "prometheus"], &url).await;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let mut typed = std::collections::HashSet::new();
    let mut samples = std::collections::HashMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            // A counter's name ends in _total; everything else is a gauge.
            let expected = if name.ends_with("_total") {
                "counter"
            } else {
                "gauge"
            };
            assert_eq!(kind, expected, "{name}");
            typed.insert(name.to_string());
        } else if !line.starts_with("# HELP ") {
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(typed.contains(name), "{name} has no TYPE line");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
                assert!(labels.starts_with('{') && labels.ends_with('}'), "{labels}");
            }
            samples.insert(series.to_string(), value.parse::<f64>().unwrap());
        }
    }
    assert_eq!(samples["token_janitor_token_rows{state=\"live\"}"], 100.0);
    assert_eq!(
        samples["token_janitor_last_run_deleted_rows{kind=\"rotated\"}"],
        300.0
    );
    assert_eq!(samples["token_janitor_last_run_status{status=\"ok\"}"], 1.0);
    assert_eq!(samples["token_janitor_security_events_total"], 0.0);
    assert_eq!(
        samples["token_janitor_security_events_last_24h{kind=\"reuse_detected\"}"],
        0.0
    );

    let out = run_cli(&["status"], &url).await;
    assert!(String::from_utf8_lossy(&out.stdout).contains("last runs:"));
}
