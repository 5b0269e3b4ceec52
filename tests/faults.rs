//! Faults: the server crashing in the middle of a run, and a long
//! transaction holding a lock on due rows.

mod common;

use std::time::Duration;

use common::*;
use rstest::rstest;
use token_janitor::DatabaseUrl;
use token_janitor::operator::migrate;

/// A PostgreSQL cluster of this test's own (scripts/pg.sh with its own
/// folder), so crashing it disturbs no other test. Removed on drop.
struct OwnCluster {
    home: std::path::PathBuf,
}

impl OwnCluster {
    fn pg_sh(&self, command: &str) -> String {
        let out = std::process::Command::new("bash")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/pg.sh"))
            .arg(command)
            .env("PGHOME", &self.home)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg.sh {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn start(&self) -> DatabaseUrl {
        DatabaseUrl::parse(&self.pg_sh("start")).unwrap()
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        self.pg_sh("destroy");
    }
}

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

const LIVE: &str = "SELECT count(*) FROM auth.refresh_tokens WHERE revoked_at IS NULL";
const ROTATED: &str = "SELECT count(*) FROM auth.refresh_tokens WHERE revoke_reason = 'rotated'";

#[tokio::test]
async fn a_crash_mid_run_loses_nothing_and_the_next_run_finishes() {
    let cluster = OwnCluster {
        home: std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("pg-crash-{}", std::process::id())),
    };
    let url = cluster.start();
    let mut client = url.connect().await.unwrap();
    migrate(&mut client, &no_schedule()).await.unwrap();
    seed_families(&client, 20_000, 2).await;
    client
        .batch_execute("UPDATE auth.cleanup_policy SET batch_size = 10; CHECKPOINT")
        .await
        .unwrap();

    let runner = url.connect().await.unwrap();
    let run =
        tokio::spawn(async move { runner.batch_execute("CALL auth.run_token_cleanup()").await });
    poll(
        "a few committed batches",
        Duration::from_secs(60),
        || async {
            (count(
                &client,
                "SELECT coalesce(max(batches), 0)::bigint FROM auth.cleanup_runs",
            )
            .await
                >= 5)
                .then_some(())
        },
    )
    .await;
    cluster.pg_sh("crash");
    assert!(run.await.unwrap().is_err(), "the run died with the server");

    let url = cluster.start();
    let client = url.connect().await.unwrap();
    assert_eq!(count(&client, LIVE).await, 20_000, "no live token lost");
    let run = client
        .query_one("SELECT status, rotated_deleted FROM auth.cleanup_runs", &[])
        .await
        .unwrap();
    assert_eq!(run.get::<_, &str>(0), "running");
    let recorded: i64 = run.get(1);
    assert_eq!(
        count(&client, ROTATED).await,
        20_000 - recorded,
        "exactly the batches the run record counts survived the crash"
    );

    client
        .batch_execute("UPDATE auth.cleanup_policy SET batch_size = 50000")
        .await
        .unwrap();
    client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let statuses: Vec<String> =
        column(&client, "SELECT status FROM auth.cleanup_runs ORDER BY id").await;
    assert_eq!(statuses, ["failed", "ok"]);
    assert_eq!(count(&client, ROTATED).await, 0);
    assert_eq!(count(&client, LIVE).await, 20_000);
}

/// Invariant 10: one due row another transaction holds (an application's
/// revocation left open in a pool) delays only itself. The run deletes every
/// other due row, ends 'ok' and records the held row as passed over; the
/// next run deletes it once it is free. Before, the lock timeout rolled the
/// whole batch back and every run ended 'partial' with nothing deleted. In
/// key order and in page order (most rows due on a heap that follows no
/// timestamp, analyzed).
#[rstest]
#[case::key_order(3, false)]
#[case::page_order(10, true)]
#[tokio::test]
async fn a_locked_due_row_delays_only_itself(#[case] per_session: i32, #[case] pages: bool) {
    let db = TestDb::migrated().await;
    seed_families(&db.client, 200, per_session).await;
    if pages {
        db.client
            .batch_execute("ANALYZE auth.refresh_tokens")
            .await
            .unwrap();
    }
    let page_order: bool = db
        .client
        .query_one(
            "SELECT auth._purge_order('rotated', auth._purge_cutoffs(p, t.retentions, now()))
             FROM auth.cleanup_policy p, auth.purge_targets('rotated') t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(page_order, pages);
    let due = count(&db.client, ROTATED).await;
    let blocker = db.connect().await;
    blocker
        .batch_execute(
            "BEGIN; SELECT 1 FROM auth.refresh_tokens WHERE revoke_reason = 'rotated' ORDER BY revoked_at DESC LIMIT 1 FOR UPDATE",
        )
        .await
        .unwrap();
    let runner = db.connect().await;
    let run =
        tokio::spawn(async move { runner.batch_execute("CALL auth.run_token_cleanup()").await });

    // Token traffic goes on meanwhile.
    let traffic = db.connect().await;
    let live: Vec<(uuid::Uuid, i32)> = traffic
        .query("SELECT session_id, generation FROM auth.refresh_tokens WHERE revoked_at IS NULL LIMIT 20", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    for (session, generation) in live {
        let outcome: String = tokio::time::timeout(
            Duration::from_secs(2),
            traffic.query_one(
                "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => $2,
                     p_token_hash => sha256(($1::uuid::text || $2::int::text)::bytea),
                     p_new_token_hash => sha256('next'::bytea), p_ttl => interval '30 days')",
                &[&session, &generation],
            ),
        )
        .await
        .expect("a rotation waited on the purge")
        .unwrap()
        .get(0);
        assert_eq!(outcome, "rotated");
    }

    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the run passes the held row in bounded time")
        .unwrap()
        .unwrap();
    let run = db
        .client
        .query_one(
            "SELECT status, error, rotated_deleted, rows_locked FROM auth.cleanup_runs",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (
            run.get::<_, &str>(0),
            run.get::<_, Option<&str>>(1),
            run.get::<_, i64>(2),
            run.get::<_, i64>(3)
        ),
        ("ok", None, due - 1, 1),
        "every due row but the held one went"
    );
    assert_eq!(
        count(&db.client, ROTATED).await,
        21,
        "the held row and the 20 rotated meanwhile (not yet due)"
    );

    blocker.batch_execute("ROLLBACK").await.unwrap();
    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(
        count(&db.client, ROTATED).await,
        20,
        "only the rows rotated meanwhile are left (not yet due)"
    );
}
