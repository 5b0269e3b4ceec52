//! `CALL auth.run_token_cleanup()`: committed batches, one run at a time,
//! killed runs lose nothing, the runtime cap, failures recorded, history pruned.

mod common;

use std::time::Duration;

use common::*;
use tokio_postgres::Client;
use tokio_postgres::error::SqlState;

/// `n` families issued a second apart from T0 - 30 days, each rotated once a
/// minute later: n rotated rows due under the default policy, n live tokens
/// (for 30 days on the server's clock).
async fn seed_rotated(client: &Client, n: i64) {
    let expires_at = plus(server_now(client).await, 30 * DAY);
    let families: Vec<Family> = (1..=n)
        .map(|i| {
            let created_at = at(-30 * DAY + i);
            let rotated = TokenRow {
                expires_at,
                revoked: Some(Reason::Rotated.at(plus(created_at, MINUTE))),
            };
            Family::new(
                format!("u{i}"),
                created_at,
                vec![rotated, TokenRow::expiring(expires_at)],
            )
        })
        .collect();
    seed(client, &families).await;
}

async fn live_tokens(client: &Client) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM auth.refresh_tokens WHERE revoked_at IS NULL",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

#[derive(Debug, PartialEq)]
struct Run {
    status: String,
    rotated: i64,
    batches: i32,
    error: Option<String>,
}

async fn runs(client: &Client) -> Vec<Run> {
    client
        .query(
            "SELECT status, rotated_deleted, batches, error FROM auth.cleanup_runs ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| Run {
            status: r.get(0),
            rotated: r.get(1),
            batches: r.get(2),
            error: r.get(3),
        })
        .collect()
}

async fn set(client: &Client, assignments: &str) {
    client
        .batch_execute(&format!("UPDATE auth.cleanup_policy SET {assignments}"))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_run_deletes_in_committed_batches_and_records_itself() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_rotated(c, 250).await;
    // Whole batches from the first (a paced run starts with small ones).
    set(c, "batch_size = 100, pace = false").await;
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let run = &runs(c).await[0];
    assert_eq!(
        (run.status.as_str(), run.rotated, run.batches),
        ("ok", 250, 3)
    );
    assert_eq!(live_tokens(c).await, 250);
    assert_eq!(counts(c).await, (250, 250));
    let finished: bool = c
        .query_one(
            "SELECT finished_at >= started_at FROM auth.cleanup_runs",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(finished);
}

/// What uses the token table while a run goes, in
/// `a_paced_run_takes_small_batches_and_pauses_while_transactions_come_and_go`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Other {
    Nothing,
    /// Transactions that read the table and commit, one after another, as
    /// rotations do (a server-side loop, so no client stall interrupts it).
    Traffic,
    /// One transaction that read the table and stays open, idle (a pooled
    /// connection left in a transaction, a pg_dump).
    IdleTransaction,
    /// SHARE UPDATE EXCLUSIVE, as autovacuum, ANALYZE or an index build.
    Maintenance,
}

/// With `pace` on, a run takes batches of an eighth of batch_size while
/// transactions come and go on the token table, every batch of it, and
/// pauses between them; with nothing else on the table, or only maintenance,
/// it starts with small batches, goes on with whole ones once it has seen no
/// traffic for a tenth of a second, and never pauses; a transaction left
/// open on the table counts only when it first shows up, so it cannot keep a
/// run slow; with `pace` off every batch is whole. Every due row goes each
/// time.
#[tokio::test]
async fn a_paced_run_takes_small_batches_and_pauses_while_transactions_come_and_go() {
    const ROWS: i64 = 6000;
    let mut seen = Vec::new();
    for (pace, other) in [
        (true, Other::Traffic),
        (true, Other::Nothing),
        (true, Other::Maintenance),
        (true, Other::IdleTransaction),
        (false, Other::Traffic),
    ] {
        let db = TestDb::migrated().await;
        let c = &db.client;
        seed_rotated(c, ROWS).await;
        set(c, &format!("batch_size = 100, pace = {pace}")).await;
        let mut holder = db.connect().await;
        let held = holder.transaction().await.unwrap();
        match other {
            Other::IdleTransaction => held
                .batch_execute("SELECT 1 FROM auth.refresh_tokens LIMIT 1")
                .await
                .unwrap(),
            Other::Maintenance => held
                .batch_execute("LOCK TABLE auth.refresh_tokens IN SHARE UPDATE EXCLUSIVE MODE")
                .await
                .unwrap(),
            Other::Nothing | Other::Traffic => {}
        }
        let traffic = if other == Other::Traffic {
            let client = db.connect().await;
            let pid: i32 = client
                .query_one("SELECT pg_backend_pid()", &[])
                .await
                .unwrap()
                .get(0);
            let task = tokio::spawn(async move {
                client
                    .batch_execute(
                        "DO $$ BEGIN LOOP
                             PERFORM 1 FROM auth.refresh_tokens LIMIT 1;
                             PERFORM pg_sleep(0.005);
                             COMMIT;
                         END LOOP; END $$",
                    )
                    .await
            });
            poll(
                "the traffic to take its first lock",
                Duration::from_secs(30),
                || async {
                    c.query_opt(
                        "SELECT FROM pg_locks
                     WHERE pid = $1 AND relation = 'auth.refresh_tokens'::regclass",
                        &[&pid],
                    )
                    .await
                    .unwrap()
                    .map(|_| ())
                },
            )
            .await;
            Some((pid, task))
        } else {
            None
        };
        let runner = db.connect().await;
        let run =
            tokio::spawn(
                async move { runner.batch_execute("CALL auth.run_token_cleanup()").await },
            );
        // Whether the run was ever seen pausing, sampled until it ends.
        let mut paused = false;
        while !run.is_finished() {
            paused |= c
                .query_one(
                    "SELECT count(*) > 0 FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event = 'PgSleep'
                       AND query LIKE 'CALL auth.run_token_cleanup%'",
                    &[],
                )
                .await
                .unwrap()
                .get::<_, bool>(0);
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        run.await.unwrap().unwrap();
        if let Some((pid, task)) = traffic {
            c.execute("SELECT pg_cancel_backend($1)", &[&pid])
                .await
                .unwrap();
            let stopped = task.await.unwrap().unwrap_err();
            assert_eq!(stopped.code(), Some(&SqlState::QUERY_CANCELED), "{stopped}");
        }
        held.rollback().await.unwrap();
        let run = &runs(c).await[0];
        assert_eq!(
            (run.status.as_str(), run.rotated),
            ("ok", ROWS),
            "pace {pace}, {other:?}"
        );
        assert_eq!(live_tokens(c).await, ROWS);
        seen.push((run.batches, paused));
    }
    // 6000 rows in batches of 12 (500) or of 100 (60). With traffic, all
    // but a few: a stall of a tenth of a second of the traffic's backend on
    // a busy machine lets a whole batch through.
    let [traffic, quiet, maintenance, idle, unpaced] = seen[..] else {
        unreachable!()
    };
    assert!(
        traffic.1 && traffic.0 >= 450 && traffic.0 <= 500,
        "{seen:?}"
    );
    assert_eq!(unpaced, (60, false), "{seen:?}");
    for alone in [quiet, maintenance] {
        assert!(!alone.1 && alone.0 > 60 && alone.0 < 500, "{seen:?}");
    }
    assert!(idle.0 > 60 && idle.0 < 500, "{seen:?}");
}

/// One check of auth._run_pace with the transactions the previous one saw:
/// whether it saw traffic, and the transactions it saw.
async fn pace_check(c: &Client, holders: Option<&[String]>) -> (bool, Vec<String>) {
    let row = c
        .query_one(
            "SELECT p_traffic_at IS NOT NULL, p_holders
             FROM auth._run_pace(100, NULL, NULL, NULL, $1)",
            &[&holders],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// auth._run_pace counts a transaction on the token table at the first check
/// that sees it: not again while it stays open, not when it ends, and the
/// next transaction of the same connection counts again.
#[tokio::test]
async fn pace_counts_a_transaction_at_the_first_check_that_sees_it() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let holder = db.connect().await;
    let read = "BEGIN; SELECT 1 FROM auth.refresh_tokens LIMIT 1";
    holder.batch_execute(read).await.unwrap();
    let (seen, first) = pace_check(c, None).await;
    assert!(seen && first.len() == 1, "{first:?}");
    let (seen, open) = pace_check(c, Some(&first)).await;
    assert!(!seen && open == first, "{open:?}");
    holder.batch_execute("COMMIT").await.unwrap();
    let (seen, ended) = pace_check(c, Some(&first)).await;
    assert!(!seen && ended.is_empty(), "{ended:?}");
    holder.batch_execute(read).await.unwrap();
    let (seen, next) = pace_check(c, Some(&first)).await;
    assert!(
        seen && next.len() == 1 && next != first,
        "{first:?} {next:?}"
    );
}

/// Invariant 4: while one run holds the lock, another returns at once, 'skipped'.
#[tokio::test]
async fn an_overlapping_run_is_skipped_at_once() {
    let db = TestDb::migrated().await;
    seed_rotated(&db.client, 10).await;
    // An owner's transaction holding the purge lock makes the first run
    // wait inside its batch.
    let blocker = db.connect().await;
    blocker
        .batch_execute("BEGIN; SELECT 1 FROM auth.locks WHERE name = 'purge' FOR UPDATE")
        .await
        .unwrap();
    let first = db.connect().await;
    let first_run =
        tokio::spawn(async move { first.batch_execute("CALL auth.run_token_cleanup()").await });
    poll("the first run to wait on the purge lock", Duration::from_secs(30), || async {
        let waiting: i64 = db
            .client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'CALL auth.run_token_cleanup%' AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (waiting == 1).then_some(())
    })
    .await;

    let second = db.connect().await;
    tokio::time::timeout(
        Duration::from_secs(5),
        second.batch_execute("CALL auth.run_token_cleanup()"),
    )
    .await
    .expect("the second run returns at once")
    .unwrap();
    let statuses: Vec<String> = runs(&db.client)
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, ["running", "skipped"]);

    blocker.batch_execute("ROLLBACK").await.unwrap();
    first_run.await.unwrap().unwrap();
    let statuses: Vec<String> = runs(&db.client)
        .await
        .into_iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, ["ok", "skipped"]);
}

/// Invariant 5: a run terminated mid-way keeps its committed batches, loses no
/// live row, and the next run marks it failed and finishes the work.
#[tokio::test]
async fn a_killed_run_loses_nothing_and_the_next_run_finishes() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_rotated(c, 20_000).await;
    set(c, "batch_size = 10").await;
    let runner = db.connect().await;
    let run =
        tokio::spawn(async move { runner.batch_execute("CALL auth.run_token_cleanup()").await });
    let pid: i32 = poll("three committed batches", Duration::from_secs(60), || async {
        c.query_opt("SELECT backend_pid FROM auth.cleanup_runs WHERE status = 'running' AND batches >= 3", &[])
            .await
            .unwrap()
            .map(|r| r.get(0))
    })
    .await;
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    assert!(
        run.await.unwrap().is_err(),
        "the killed CALL reports an error"
    );

    let killed = &runs(c).await[0];
    assert_eq!(killed.status, "running");
    assert!(killed.batches >= 3);
    let rotated_left: i64 = c
        .query_one(
            "SELECT count(*) FROM auth.refresh_tokens WHERE revoke_reason = 'rotated'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        rotated_left <= 20_000 - killed.rotated,
        "committed batches stay done: {rotated_left} left after {} recorded",
        killed.rotated
    );
    assert!(rotated_left > 0, "the run was killed before it finished");
    assert_eq!(live_tokens(c).await, 20_000);

    set(c, "batch_size = 10000").await;
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let all = runs(c).await;
    assert_eq!(all[0].status, "failed");
    assert!(
        all[0]
            .error
            .as_deref()
            .unwrap()
            .contains("without finishing")
    );
    assert_eq!(all[1].status, "ok");
    assert_eq!(counts(c).await, (20_000, 20_000));
    assert_eq!(live_tokens(c).await, 20_000);
}

/// Invariant 6: a run stops after max_runtime, 'partial', whatever the backlog.
#[tokio::test]
async fn a_run_stops_at_max_runtime_as_partial() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_rotated(c, 2_000).await;
    set(c, "batch_size = 10, max_runtime = interval '1 millisecond'").await;
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let run = &runs(c).await[0];
    assert_eq!(run.status, "partial");
    assert!(run.batches >= 1 && run.rotated < 2_000, "{run:?}");
    set(c, "batch_size = 10000, max_runtime = interval '1 minute'").await;
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(runs(c).await[1].status, "ok");
    assert_eq!(counts(c).await, (2_000, 2_000));
}

#[tokio::test]
async fn a_failing_purge_is_recorded_and_releases_the_lock() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_rotated(c, 10).await;
    c.batch_execute(
        "CREATE FUNCTION fail() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'disk on fire'; END $$;
         CREATE TRIGGER fail BEFORE DELETE ON auth.refresh_tokens FOR EACH ROW EXECUTE FUNCTION fail();",
    )
    .await
    .unwrap();
    let message = refused(c, "CALL auth.run_token_cleanup()").await;
    assert!(message.contains("disk on fire"), "{message}");
    let run = &runs(c).await[0];
    assert_eq!(run.status, "failed");
    assert!(run.error.as_deref().unwrap().contains("disk on fire"));

    c.batch_execute("DROP TRIGGER fail ON auth.refresh_tokens")
        .await
        .unwrap();
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(
        runs(c).await[1].status,
        "ok",
        "the lock was released: not skipped"
    );
}

#[tokio::test]
async fn old_run_history_is_pruned() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    c.batch_execute(
        "INSERT INTO auth.cleanup_runs (started_at, finished_at, status)
         VALUES (now() - interval '15 days', now() - interval '15 days', 'ok'),
                (now() - interval '13 days', now() - interval '13 days', 'ok')",
    )
    .await
    .unwrap();
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let ages: Vec<i64> = column(
        c,
        "SELECT extract(day FROM now() - started_at)::bigint FROM auth.cleanup_runs ORDER BY id",
    )
    .await;
    assert_eq!(
        ages,
        vec![13, 0],
        "the 15-day-old run is past the default 14-day history_retention"
    );
}

#[rstest::rstest]
#[case("batch_size = 0", "batch_size_must_be_between_1_and_100000")]
#[case("batch_size = 100001", "batch_size_must_be_between_1_and_100000")]
#[case("max_runtime = interval '0'", "max_runtime_must_be_positive")]
#[case(
    "expired_retention = interval '-1 second'",
    "expired_retention_must_not_be_negative"
)]
#[case(
    "revoked_retention = interval '-1 day'",
    "revoked_retention_must_not_be_negative"
)]
#[case(
    "rotated_retention = interval '-1 hour'",
    "rotated_retention_must_not_be_negative"
)]
#[case(
    "history_retention = interval '0'",
    "history_retention_must_be_positive"
)]
#[case("batch_size = NULL", "batch_size")]
#[tokio::test]
async fn the_policy_refuses_bad_settings_by_column(#[case] assignment: &str, #[case] names: &str) {
    let db = TestDb::migrated().await;
    let said = refused(
        &db.client,
        &format!("UPDATE auth.cleanup_policy SET {assignment}"),
    )
    .await;
    assert!(said.contains(names), "{said}");
}

#[tokio::test]
async fn the_policy_keeps_exactly_one_row() {
    let db = TestDb::migrated().await;
    for (sql, says) in [
        (
            "INSERT INTO auth.cleanup_policy DEFAULT VALUES",
            "cleanup_policy_has_exactly_one_row",
        ),
        ("DELETE FROM auth.cleanup_policy", "must keep its one row"),
        ("TRUNCATE auth.cleanup_policy", "must keep its one row"),
    ] {
        let message = refused(&db.client, sql).await;
        assert!(message.contains(says), "{sql}: {message}");
    }
}
