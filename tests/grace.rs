//! The reuse grace: the immediate predecessor presented again within
//! `reuse_grace` of its rotation (a lost response, two tabs, a retry) gets
//! the same successor and revokes nothing; after the grace, or for any older
//! token, it is a replay.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use token_janitor::testing::simulated::{issue_at, rotate_at};
use token_janitor::{Rotation, TokenStore};

const TTL: Duration = Duration::from_secs(3600);

fn rotated(outcome: Rotation) -> token_janitor::Issued {
    match outcome {
        Rotation::Rotated(next) => next,
        other => panic!("expected Rotated, got {other:?}"),
    }
}

#[rstest::rstest]
#[tokio::test]
async fn a_retry_within_the_grace_gets_the_same_successor_even_once_its_row_is_purged(
    #[values(false, true)] history: bool,
) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET rotated_retention = '0'")
        .await
        .unwrap();
    let first = issue_at(&db.client, "ann", TTL, at(0)).await.unwrap();
    let second = rotated(
        rotate_at(&db.client, first.token.expose(), TTL, at(60))
            .await
            .unwrap(),
    );
    let again = rotated(
        rotate_at(&db.client, first.token.expose(), TTL, at(65))
            .await
            .unwrap(),
    );
    assert_eq!(again.token, second.token);
    assert_eq!((again.generation, again.expires_at), (1, second.expires_at));

    purge(&db.client, at(66), None).await;
    let gone: i64 = column(
        &db.client,
        "SELECT count(*) FROM auth.refresh_tokens WHERE generation = 0",
    )
    .await[0];
    assert_eq!(gone, 0, "generation 0's row is purged");
    let after_purge = rotated(
        rotate_at(&db.client, first.token.expose(), TTL, at(69))
            .await
            .unwrap(),
    );
    assert_eq!(after_purge.token, second.token);
    assert_eq!(counts(&db.client).await, (1, 1), "nothing was added");
    // The successor still rotates, and only once.
    let third = rotated(
        rotate_at(&db.client, second.token.expose(), TTL, at(70))
            .await
            .unwrap(),
    );
    assert_eq!(third.generation, 2);
}

#[rstest::rstest]
#[tokio::test]
async fn two_concurrent_rotations_of_one_token_both_end_with_the_same_working_token(
    #[values(false, true)] history: bool,
) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    let store = TokenStore::new(db.url.pool(4));
    for _ in 0..5 {
        let first = store.issue("bob").await.unwrap();
        let (a, b) = tokio::join!(
            store.rotate(first.token.expose()),
            store.rotate(first.token.expose())
        );
        let (a, b) = (rotated(a.unwrap()), rotated(b.unwrap()));
        assert_eq!(a.token, b.token, "one successor, not two branches");
        assert!(matches!(
            store.rotate(a.token.expose()).await.unwrap(),
            Rotation::Rotated(_)
        ));
    }
    let events: i64 = column(&db.client, "SELECT count(*) FROM auth.security_events").await[0];
    assert_eq!(events, 0);
}

#[rstest::rstest]
#[tokio::test]
async fn after_the_grace_or_further_back_a_replay_is_reuse(#[values(false, true)] history: bool) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    // After the grace (10 seconds by default).
    let first = issue_at(&db.client, "cat", TTL, at(0)).await.unwrap();
    let second = rotated(
        rotate_at(&db.client, first.token.expose(), TTL, at(60))
            .await
            .unwrap(),
    );
    let late = rotate_at(&db.client, first.token.expose(), TTL, at(70))
        .await
        .unwrap();
    assert!(matches!(late, Rotation::ReuseDetected), "{late:?}");
    assert!(matches!(
        rotate_at(&db.client, second.token.expose(), TTL, at(71))
            .await
            .unwrap(),
        Rotation::Revoked
    ));

    // Two generations back, within the grace of the last rotation.
    let first = issue_at(&db.client, "dan", TTL, at(0)).await.unwrap();
    let second = rotated(
        rotate_at(&db.client, first.token.expose(), TTL, at(60))
            .await
            .unwrap(),
    );
    rotated(
        rotate_at(&db.client, second.token.expose(), TTL, at(61))
            .await
            .unwrap(),
    );
    assert!(matches!(
        rotate_at(&db.client, first.token.expose(), TTL, at(62))
            .await
            .unwrap(),
        Rotation::ReuseDetected
    ));

    // reuse_grace = 0 turns the grace off: no seal is even kept.
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let first = issue_at(&db.client, "eve", TTL, at(0)).await.unwrap();
    rotated(
        rotate_at(&db.client, first.token.expose(), TTL, at(60))
            .await
            .unwrap(),
    );
    let seals: i64 = column(
        &db.client,
        "SELECT count(*) FROM auth.refresh_tokens t JOIN auth.sessions s ON s.id = t.session_id
         WHERE s.user_id = 'eve' AND t.successor_seal IS NOT NULL",
    )
    .await[0];
    assert_eq!(seals, 0);
    assert!(matches!(
        rotate_at(&db.client, first.token.expose(), TTL, at(60))
            .await
            .unwrap(),
        Rotation::ReuseDetected
    ));
    let events: Vec<String> = column(
        &db.client,
        "SELECT user_id || ':' || generation FROM auth.security_events ORDER BY id",
    )
    .await;
    assert_eq!(events, vec!["cat:0", "dan:0", "eve:0"]);
}

#[rstest::rstest]
#[tokio::test]
async fn grace_keys_do_not_outlive_the_grace(#[values(false, true)] history: bool) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    let first = issue_at(&db.client, "fay", TTL, at(0)).await.unwrap();
    rotated(
        rotate_at(&db.client, first.token.expose(), TTL, at(60))
            .await
            .unwrap(),
    );
    let keys = || column::<i64>(&db.client, "SELECT count(*) FROM auth.grace_keys");
    assert_eq!(keys().await[0], 1);
    // The next rotation that needs a new key deletes the ones past their use
    // (a key's slice is 2.5 s; its seals are in their grace 10 s after that).
    let other = issue_at(&db.client, "gus", TTL, at(60)).await.unwrap();
    rotated(
        rotate_at(&db.client, other.token.expose(), TTL, at(72))
            .await
            .unwrap(),
    );
    assert_eq!(keys().await[0], 2, "60 + 2.5 + 10 > 72: still needed");
    let other = issue_at(&db.client, "hal", TTL, at(60)).await.unwrap();
    rotated(
        rotate_at(&db.client, other.token.expose(), TTL, at(73))
            .await
            .unwrap(),
    );
    let starts: Vec<String> = column(
        &db.client,
        "SELECT to_char(starts_at AT TIME ZONE 'UTC', 'HH24:MI:SS.MS') FROM auth.grace_keys ORDER BY starts_at",
    )
    .await;
    assert_eq!(
        starts,
        vec!["00:01:10.000", "00:01:12.500"],
        "60 + 12.5 <= 73: the key of 00:01:00 is gone"
    );
    // When rotations stop, the cleanup run deletes the last ones.
    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(keys().await[0], 0);
}

/// Pruning grace keys never waits: a key another transaction holds is left
/// for the next prune (prunes at different clocks, planned in different
/// orders, deadlocked before).
#[rstest::rstest]
#[tokio::test]
async fn pruning_grace_keys_skips_what_another_transaction_holds(
    #[values(false, true)] history: bool,
) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    db.client
        .batch_execute(
            "INSERT INTO auth.grace_keys (starts_at, mac_key)
             SELECT timestamptz '2026-01-01' + i * interval '1 minute', auth._new_mac_key()
             FROM generate_series(0, 2) i",
        )
        .await
        .unwrap();
    let holder = db.connect().await;
    holder
        .batch_execute(
            "BEGIN; SELECT 1 FROM auth.grace_keys WHERE starts_at = '2026-01-01 00:01:00+00' FOR UPDATE",
        )
        .await
        .unwrap();
    db.client
        .batch_execute("SET lock_timeout = '2s'")
        .await
        .unwrap();
    let deleted: Vec<i64> = column(
        &db.client,
        "SELECT auth._prune_grace_keys(timestamptz '2026-01-02', interval '10 seconds')",
    )
    .await;
    assert_eq!(deleted, vec![2]);
    holder.batch_execute("COMMIT").await.unwrap();
    let left: Vec<i64> = column(&db.client, "SELECT count(*) FROM auth.grace_keys").await;
    assert_eq!(left, vec![1]);
}

/// When each grace key stops being needed: its slice's start plus 1.25 s
/// (a quarter of a 1-second reuse_grace, then the grace).
async fn key_ends(client: &tokio_postgres::Client) -> Vec<SystemTime> {
    column(
        client,
        "SELECT starts_at + interval '1.25 seconds' FROM auth.grace_keys ORDER BY starts_at",
    )
    .await
}

/// Waits until the server's clock is half a second past `t`.
async fn past(client: &tokio_postgres::Client, t: SystemTime) {
    let mark = t + Duration::from_millis(500);
    poll(
        "the server's clock to pass the key's end",
        Duration::from_secs(20),
        || async {
            let row = client
                .query_one("SELECT clock_timestamp() > $1", &[&mark])
                .await
                .unwrap();
            row.get::<_, bool>(0).then_some(())
        },
    )
    .await
}

/// The real window of a grace key (README, "What a leaked copy of the
/// database allows"), at the server's clock: a key outlives the grace of
/// the seals it wraps by up to a quarter of reuse_grace (its slice); after
/// that it lives on until the first sealed rotation, or, when none comes,
/// until the next cleanup run. The read path refuses a seal past its grace
/// meanwhile.
#[rstest::rstest]
#[tokio::test]
async fn a_grace_key_lives_until_the_next_sealed_rotation_or_cleanup_run(
    #[values(false, true)] history: bool,
) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '1 second'")
        .await
        .unwrap();
    let store = TokenStore::new(db.url.pool(2));
    let first = store.issue("ida").await.unwrap();
    rotated(store.rotate(first.token.expose()).await.unwrap());
    let first_key_ends = key_ends(&db.client).await;
    assert_eq!(first_key_ends.len(), 1);

    // Past its end, with no rotation, the key is still there.
    past(&db.client, first_key_ends[0]).await;
    assert_eq!(
        key_ends(&db.client).await,
        first_key_ends,
        "no rotation, no run: the key stays"
    );

    // The next sealed rotation (another family's) deletes it.
    let other = store.issue("jon").await.unwrap();
    rotated(store.rotate(other.token.expose()).await.unwrap());
    let second_key_ends = key_ends(&db.client).await;
    assert_eq!(second_key_ends.len(), 1);
    assert!(
        second_key_ends[0] > first_key_ends[0],
        "only the new key is left"
    );

    // Past the new key's end, the cleanup run deletes it.
    past(&db.client, second_key_ends[0]).await;
    assert_eq!(key_ends(&db.client).await, second_key_ends);
    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert!(key_ends(&db.client).await.is_empty(), "the run deletes it");

    // The grace is over for both: presenting either predecessor is a replay.
    for token in [&first, &other] {
        let late = store.rotate(token.token.expose()).await.unwrap();
        assert!(matches!(late, Rotation::ReuseDetected), "{late:?}");
    }
}
