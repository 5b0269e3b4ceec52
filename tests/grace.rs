//! The reuse grace: the immediate predecessor presented again within
//! `reuse_grace` of its rotation (a lost response, two tabs, a retry) gets
//! the same successor and revokes nothing; after the grace, or for any older
//! token, it is a replay.

mod common;

use std::time::Duration;

use common::*;
use token_janitor::store::simulated::{issue_at, rotate_at};
use token_janitor::{Rotation, TokenStore};

const TTL: Duration = Duration::from_secs(3600);

fn rotated(outcome: Rotation) -> token_janitor::Issued {
    match outcome {
        Rotation::Rotated(next) => next,
        other => panic!("expected Rotated, got {other:?}"),
    }
}

#[tokio::test]
async fn a_retry_within_the_grace_gets_the_same_successor_even_once_its_row_is_purged() {
    let db = TestDb::migrated().await;
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
