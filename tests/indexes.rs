//! The purge's indexes on a table of a million rows: every purge query is
//! bounded (an index range, or a TID range of pages), and building an index
//! does not stop token traffic.

mod common;

use std::time::Duration;

use common::*;
use token_janitor::operator::migrate;
use token_janitor::testing::index_statements;

async fn assert_bounded(client: &tokio_postgres::Client) {
    let plans = client
        .query(
            "SELECT e.kind, e.step, e.seq_scan, e.plan, t.indexes
             FROM auth.explain_purge() e JOIN auth.purge_targets() t USING (kind)",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        plans.len(),
        37,
        "3 token kinds x 9 steps (4 in key order, 1 in page order, 4 '_skip' twins) + 7 steps of \
         expired_in_place (4 in key order and their '_skip' twins but 'bound') + 2 session steps + \
         1 security events step"
    );
    for row in &plans {
        let (kind, step, seq, plan, indexes): (&str, &str, bool, &str, Vec<String>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        assert!(!seq, "{kind}/{step} is unbounded:\n{plan}");
        if step.starts_with("pages") {
            // A bounded range of pages, and no index: its rows by their TIDs.
            assert!(
                plan.contains("Tid Range Scan")
                    && plan.contains("TID Cond: ((ctid >= ")
                    && plan.contains("AND (ctid < ")
                    && !plan.contains("Index"),
                "{kind}/{step} is not a TID range scan:\n{plan}"
            );
            continue;
        }
        assert!(
            plan.contains("Index"),
            "{kind}/{step} uses no index:\n{plan}"
        );
        // A session step may start from the primary key (the sessions it
        // was given); every other step uses its kind's own index.
        if step != "touched" {
            assert!(
                indexes.iter().any(|index| plan.contains(index.as_str())),
                "{kind}/{step} uses none of {indexes:?}:\n{plan}"
            );
        }
    }
}

/// Every index sql/indexes.sql builds serves a purge target, and every
/// index a target names exists after migrate: no index costs rotations
/// without a purge query using it.
#[tokio::test]
async fn every_purge_index_serves_a_target_and_exists() {
    let db = TestDb::migrated().await;
    let named: Vec<String> = column(
        &db.client,
        "SELECT DISTINCT i FROM auth.purge_targets() t, unnest(t.indexes) i ORDER BY i",
    )
    .await;
    for index in index_statements(&token_janitor::Schema::default()) {
        assert!(
            named.contains(&index.name),
            "{} serves no purge target",
            index.name
        );
    }
    let present: Vec<String> = column(
        &db.client,
        "SELECT c.relname::text FROM pg_class c
         WHERE c.relnamespace = 'auth'::regnamespace AND c.relkind = 'i' ORDER BY 1",
    )
    .await;
    for index in &named {
        assert!(
            present.contains(index),
            "{index} is named by a target but missing"
        );
    }
}

#[tokio::test]
async fn purge_queries_use_indexes_and_index_builds_do_not_block_rotations() {
    let mut db = TestDb::migrated().await;
    seed_families(&db.client, 100_000, 10).await;
    assert_eq!(counts(&db.client).await, (100_000, 1_000_000));
    assert_bounded(&db.client).await;

    // Rebuild the largest purge index as a deploy would on a live table.
    db.client
        .batch_execute("DROP INDEX auth.refresh_tokens_expired_rows_idx")
        .await
        .unwrap();
    let live: Vec<(uuid::Uuid, i32)> = db
        .client
        .query("SELECT session_id, generation FROM auth.refresh_tokens WHERE revoked_at IS NULL LIMIT 50", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let traffic = db.connect().await;
    let watcher = db.connect().await;
    let mut deploy_client = db.connect().await;
    let deploy = tokio::spawn(async move { migrate(&mut deploy_client, &no_schedule()).await });

    poll("the concurrent index build to start", Duration::from_secs(60), || async {
        let building: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_progress_create_index
                 WHERE relid = 'auth.refresh_tokens'::regclass AND command = 'CREATE INDEX CONCURRENTLY'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        (building > 0).then_some(())
    })
    .await;
    let mut during_build = 0;
    for (session, generation) in live {
        let outcome: String = traffic
            .query_one(
                "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => $2,
                     p_token_hash => sha256(($1::uuid::text || $2::int::text)::bytea), p_new_token_hash => sha256('next'::bytea),
                     p_ttl => interval '30 days')",
                &[&session, &generation],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(outcome, "rotated");
        let still_building: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_progress_create_index WHERE relid = 'auth.refresh_tokens'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if still_building == 0 {
            break;
        }
        during_build += 1;
    }
    assert!(
        during_build > 0,
        "no rotation completed while the index was being built"
    );
    let report = deploy.await.unwrap().unwrap();
    assert_eq!(
        report.indexes_built,
        vec!["refresh_tokens_expired_rows_idx".to_string()]
    );
    migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_bounded(&db.client).await;
}
