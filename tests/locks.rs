//! Invariant 10: the locks the cleanup and the logins take are rows of tables
//! only the owner role may touch (auth.locks, auth.user_locks), so neither the
//! application nor the monitoring role can stop a run or hold up a login
//! through them, and pg_locks names no user. Advisory locks, which any role
//! may take and see, stopped every run when the monitoring role held the
//! run's key, and showed hashtext(user id) of every login.

mod common;

use std::time::Duration;

use common::*;
use token_janitor::TokenStore;

/// The advisory keys releases up to 0.1 took for the run ('tjcl'), the
/// purge ('tjcm') and exact counts ('tjob'), which the monitoring role holds,
/// and for a user's logins ('tjus', hashtext(user id)), which the
/// application role holds.
const OLD_RUN_KEYS: &str =
    "SELECT pg_advisory_lock(x'746a636c'::int), pg_advisory_lock(x'746a636d'::int),
            pg_advisory_lock(x'746a6f62'::int)";
const OLD_USER_KEYS: &str = "SELECT pg_advisory_lock(x'746a7573'::int, hashtext('alice')),
            pg_advisory_lock(x'746a7573'::int, hashtext('bob'))";

const DUE: &str = "SELECT count(*) FROM auth.refresh_tokens WHERE revoke_reason = 'rotated'";

async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.unwrap().get(0)
}

#[tokio::test]
async fn no_other_role_can_stop_a_run_or_hold_up_a_login() {
    let db = TestDb::migrated().await;
    seed_families(&db.client, 50, 3).await;
    let due = count(&db.client, DUE).await;
    assert!(due > 0);
    let (monitor, _, m) = member_of(&db, "token_janitor_monitor").await;
    let (app, app_url, a) = member_of(&db, "token_janitor_app").await;

    // Neither may touch the lock tables.
    for client in [&m, &a] {
        all_denied(
            client,
            &[
                "SELECT 1 FROM auth.locks FOR UPDATE",
                "SELECT 1 FROM auth.user_locks FOR KEY SHARE",
                "DO $$ BEGIN LOCK TABLE auth.locks; END $$",
                "DO $$ BEGIN LOCK TABLE auth.user_locks IN ACCESS SHARE MODE; END $$",
                "UPDATE auth.locks SET holder_pid = pg_backend_pid()",
                "SELECT auth._lock('cleanup run')",
                "SELECT auth._claim_run()",
            ],
        )
        .await;
    }
    // alice has logged in before: her lock row exists. (A user's very
    // first login creates it, and until that transaction ends the user's
    // other logins wait for it: docs/design.md §7.)
    TokenStore::new(app_url.pool(1))
        .issue("alice")
        .await
        .unwrap();
    // Both hold every lock they can get, in open transactions: the keys of
    // the old advisory locks, the tables they may read, and (the
    // application) a login of alice left open.
    m.batch_execute(&format!(
        "{OLD_RUN_KEYS}; BEGIN; LOCK TABLE auth.cleanup_policy, auth.cleanup_runs IN ACCESS SHARE MODE;
         SELECT * FROM auth.token_counts(false)"
    ))
    .await
    .unwrap();
    a.batch_execute(&format!(
        "{OLD_USER_KEYS}; BEGIN;
         SELECT * FROM auth.issue_token(p_user_id => 'alice', p_token_hash => sha256('a'), p_ttl => '1 hour')"
    ))
    .await
    .unwrap();

    // The scheduled run deletes what is due, and logins proceed.
    tokio::time::timeout(
        Duration::from_secs(30),
        db.client.batch_execute("CALL auth.run_token_cleanup()"),
    )
    .await
    .expect("the run does not wait on the other roles")
    .unwrap();
    let run = db
        .client
        .query_one("SELECT status, rotated_deleted FROM auth.cleanup_runs", &[])
        .await
        .unwrap();
    assert_eq!((run.get::<_, &str>(0), run.get::<_, i64>(1)), ("ok", due));
    let store = TokenStore::new(app_url.pool(2));
    for user in ["alice", "bob"] {
        tokio::time::timeout(Duration::from_secs(10), store.issue(user))
            .await
            .unwrap_or_else(|_| panic!("{user}'s login waited on another role's locks"))
            .unwrap();
    }

    // An open login shows in pg_locks as no advisory lock: nothing derived
    // from the user's id (its row locks are in the tuples).
    let login = app_url.connect().await.unwrap();
    login
        .batch_execute(
            "BEGIN; SELECT * FROM auth.issue_token(p_user_id => 'carol', p_token_hash => sha256('c'),
                                                   p_ttl => '1 hour')",
        )
        .await
        .unwrap();
    let pid: i32 = login
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let shown: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE pid = $1 AND locktype NOT IN ('relation', 'virtualxid', 'transactionid')",
            &[&pid],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        shown, 0,
        "a login takes no advisory, tuple or object lock others can see"
    );
    login.batch_execute("COMMIT").await.unwrap();

    a.batch_execute("COMMIT").await.unwrap();
    m.batch_execute("COMMIT").await.unwrap();
    drop_member(&db, &monitor, m).await;
    drop_member(&db, &app, a).await;
}

/// A run's lease names its backend: a lease left by a backend that is gone
/// (killed, a crash) holds nothing, while a live holder's makes a second
/// run record 'skipped'.
#[tokio::test]
async fn a_lease_left_by_a_dead_backend_does_not_skip_the_next_run() {
    let db = TestDb::migrated().await;
    db.client
        .batch_execute(
            "UPDATE auth.locks SET holder_pid = 2147483647, holder_started = now() - interval '1 day'
             WHERE name = 'cleanup run'",
        )
        .await
        .unwrap();
    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let live = db.connect().await;
    live.batch_execute(
        "UPDATE auth.locks SET holder_pid = pg_backend_pid(),
             holder_started = (SELECT backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid())
         WHERE name = 'cleanup run'",
    )
    .await
    .unwrap();
    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let statuses: Vec<String> = column(
        &db.client,
        "SELECT status FROM auth.cleanup_runs ORDER BY id",
    )
    .await;
    assert_eq!(statuses, ["ok", "skipped"]);
    let holder: Option<i32> = db
        .client
        .query_one(
            "SELECT holder_pid FROM auth.locks WHERE name = 'cleanup run'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        holder.is_some(),
        "a skipped run leaves the holder's lease alone"
    );
}

/// A bulk import: tens of thousands of users issued in one transaction. One
/// advisory lock per user, held to commit, ran out of the shared lock table
/// (about 6,400 slots) at a few thousand users; row locks take no slot.
#[tokio::test]
async fn a_bulk_import_issues_twenty_thousand_users_in_one_transaction() {
    let db = TestDb::migrated().await;
    let issued = count(
        &db.client,
        "SELECT count(*) FROM generate_series(1, 20000) g,
             auth.issue_token(p_user_id => 'bulk-' || g, p_token_hash => sha256(g::text::bytea),
                              p_ttl => '1 hour')",
    )
    .await;
    assert_eq!(issued, 20_000);
    assert_eq!(
        count(&db.client, "SELECT count(*) FROM auth.sessions").await,
        20_000
    );
}

/// A lock row that went missing fails the purge naming the fix, and the
/// next migrate puts it back.
#[tokio::test]
async fn a_missing_lock_row_is_named_and_migrate_restores_it() {
    let mut db = TestDb::migrated().await;
    db.client
        .batch_execute("DELETE FROM auth.locks WHERE name = 'purge'")
        .await
        .unwrap();
    let err = db
        .client
        .batch_execute("SELECT * FROM auth.purge_refresh_tokens()")
        .await
        .unwrap_err();
    let message = err.as_db_error().unwrap().message().to_string();
    assert!(
        message.contains("no lock named 'purge'") && message.contains("token-janitor migrate"),
        "{message}"
    );
    token_janitor::operator::migrate(&mut db.client, &no_schedule())
        .await
        .unwrap();
    db.client
        .batch_execute("SELECT * FROM auth.purge_refresh_tokens()")
        .await
        .unwrap();
}
