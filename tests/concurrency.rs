//! Many clients rotating, replaying and revoking while purges run in a loop:
//! no deadlock, no error, only documented outcomes, invariants intact after.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;
use token_janitor::store::{issue_with, revoke_session_with, rotate_with};
use token_janitor::{RevokeReason, Rotation};

const CLIENTS: usize = 6;
const FAMILIES_PER_CLIENT: usize = 5;
const ROUNDS: usize = 400;

#[tokio::test]
async fn traffic_and_purges_interleave_safely() {
    let db = TestDb::migrated().await;
    // Everything rotated is due at once, and batches are tiny: the purge
    // works through the same pages and sessions the clients are using.
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET rotated_retention = '0', revoked_retention = '0', batch_size = 7")
        .await
        .unwrap();
    let ttl = Duration::from_secs(3600);
    let stop = Arc::new(AtomicBool::new(false));

    let mut purgers = Vec::new();
    for kind in 0..2 {
        let (client, stop) = (db.connect().await, stop.clone());
        purgers.push(tokio::spawn(async move {
            let mut runs = 0u32;
            while !stop.load(Ordering::Relaxed) {
                if kind == 0 {
                    client
                        .batch_execute("CALL auth.run_token_cleanup()")
                        .await?;
                } else {
                    client
                        .query(
                            "SELECT * FROM auth.purge_refresh_tokens(p_limit => 13)",
                            &[],
                        )
                        .await?;
                }
                runs += 1;
            }
            Ok::<u32, tokio_postgres::Error>(runs)
        }));
    }

    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let client = db.connect().await;
        clients.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for f in 0..FAMILIES_PER_CLIENT {
                held.push(Some(
                    issue_with(&client, &format!("user-{c}-{f}"), ttl).await?,
                ));
            }
            let mut old_tokens = Vec::new();
            for round in 0..ROUNDS {
                let f = round % FAMILIES_PER_CLIENT;
                let Some(token) = held[f].clone() else {
                    // The family was revoked: the user logs in again.
                    held[f] = Some(issue_with(&client, &format!("user-{c}-{f}"), ttl).await?);
                    continue;
                };
                match round % 20 {
                    // A thief replays an old token of this family.
                    7 if !old_tokens.is_empty() => {
                        let (family, old): (usize, token_janitor::Issued) =
                            old_tokens.swap_remove(0);
                        let outcome = rotate_with(&client, old.token.expose(), ttl).await?;
                        // Revoked, or Unknown once a revoked family is purged;
                        // within the reuse grace, the immediate predecessor gets
                        // the family's live token again, never a new one.
                        let same_session = |held: &Option<token_janitor::Issued>| {
                            held.as_ref()
                                .is_some_and(|h| h.session_id == old.session_id)
                        };
                        match outcome {
                            // The family is revoked; an older family of this
                            // slot is already revoked, and the held one lives.
                            Rotation::ReuseDetected if same_session(&held[family]) => {
                                held[family] = None
                            }
                            Rotation::ReuseDetected => {}
                            Rotation::Revoked | Rotation::Unknown => {}
                            Rotation::Rotated(again) => assert_eq!(
                                Some(again.token),
                                held[family].as_ref().map(|live| live.token.clone()),
                                "a replay within the grace must return the live token"
                            ),
                            other => panic!("replay read {other:?}"),
                        }
                    }
                    13 => {
                        revoke_session_with(&client, token.session_id, RevokeReason::Logout)
                            .await?;
                        held[f] = None;
                    }
                    _ => match rotate_with(&client, token.token.expose(), ttl).await? {
                        Rotation::Rotated(next) => {
                            old_tokens.push((f, token));
                            held[f] = Some(next);
                        }
                        other => panic!("the holder of a live token got {other:?}"),
                    },
                }
            }
            Ok::<_, token_janitor::Error>(held.into_iter().flatten().collect::<Vec<_>>())
        }));
    }

    let mut survivors = Vec::new();
    for client in clients {
        survivors.extend(client.await.unwrap().unwrap());
    }
    stop.store(true, Ordering::Relaxed);
    for purger in purgers {
        let runs = purger
            .await
            .unwrap()
            .expect("no purge error (no deadlock, no serialization failure)");
        assert!(runs > 0);
    }

    // Every token still held is live and rotates; nothing else is left due.
    for token in survivors {
        assert!(matches!(
            rotate_with(&db.client, token.token.expose(), ttl)
                .await
                .unwrap(),
            Rotation::Rotated(_)
        ));
    }
    let failed: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM auth.cleanup_runs WHERE status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failed, 0);
}
