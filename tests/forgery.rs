//! A forgery never does what only a genuine token may (docs/design.md §4-5,
//! invariants 3 and 8): whoever knows a session id but no secret cannot log
//! its user out, before or after the purge, in any token format; and a read
//! of every table and column (a leaked backup), even with an old token of the
//! family, mints no token that rotates.

mod common;

use common::*;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use token_janitor::{Rotation, TokenStore};
use tokio_postgres::Client;
use uuid::Uuid;

/// Every way to forge generation 0 of `session` without its secret: a
/// legacy rt1_ token built from scratch, an rt2_ one with a random
/// authenticator, and an rt2_ one with no authenticator bytes that verify.
fn forgeries(session: Uuid) -> Vec<String> {
    vec![
        build(session, 0, &random(32), None),
        build(session, 0, &random(32), Some(&random(16))),
        build(session, 0, &random(32), Some(&[0; 16])),
    ]
}

async fn events(client: &Client) -> i64 {
    column(client, "SELECT count(*) FROM auth.security_events").await[0]
}

#[rstest::rstest]
#[tokio::test]
async fn a_forged_replay_is_invalid_before_and_after_the_purge_and_logs_nobody_out(
    #[values(false, true)] history: bool,
) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));
    let first = store.issue("victim").await.unwrap();
    let Rotation::Rotated(mut live) = store.rotate(first.token.expose()).await.unwrap() else {
        panic!("the victim's first refresh");
    };

    for purged in [false, true] {
        if purged {
            // With token_history, generations 0 and 1 were rotated an
            // instant ago: due two hours on. Without, rotation kept no row
            // for them and generation 0's forgeries met no row before either.
            let (_, _, rotated, _) = purge_in_hours(&db.client, 2).await;
            assert_eq!(rotated, if history { 2 } else { 0 });
        }
        for forged in forgeries(first.session_id) {
            let outcome = store.rotate(&forged).await.unwrap();
            assert!(
                matches!(outcome, Rotation::Invalid),
                "purged {purged}: {} read {outcome:?}",
                &forged[..4]
            );
        }
        // The same through SQL, as the application role: any hash, any
        // authenticator or none.
        for authenticator in [None, Some(random(16))] {
            let outcome: String = app
                .query_one(
                    "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => 0,
                         p_token_hash => $2, p_new_token_hash => $3, p_ttl => '1 hour',
                         p_authenticator => $4)",
                    &[&first.session_id, &random(32), &random(32), &authenticator],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(outcome, "invalid", "purged {purged}");
        }
        assert_eq!(events(&db.client).await, 0);
        let Rotation::Rotated(next) = store.rotate(live.token.expose()).await.unwrap() else {
            panic!("purged {purged}: the victim was logged out by a forgery");
        };
        live = next;
    }

    // The genuine token, its row purged, is proven by its authenticator.
    assert!(matches!(
        store.rotate(first.token.expose()).await.unwrap(),
        Rotation::ReuseDetected
    ));
    let recorded: Vec<String> = column(
        &db.client,
        "SELECT kind || ':' || user_id || ':' || generation FROM auth.security_events",
    )
    .await;
    assert_eq!(recorded, vec!["reuse_detected:victim:0"]);
    assert!(matches!(
        store.rotate(live.token.expose()).await.unwrap(),
        Rotation::Revoked
    ));
    drop(store);
    drop_member(&db, &role, app).await;
}

/// `auth.purge_refresh_tokens` as of `hours` from the server's now.
async fn purge_in_hours(client: &Client, hours: i32) -> (i64, i64, i64, i64) {
    let row = client
        .query_one(
            "SELECT expired, revoked, rotated, sessions FROM auth.purge_refresh_tokens(
                 p_now => now() + make_interval(hours => $1))",
            &[&hours],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

/// Every bytea value in every table of schema auth: what a leaked backup holds.
async fn everything_stored(client: &Client) -> Vec<Vec<u8>> {
    let columns: Vec<String> = column(
        client,
        "SELECT format('SELECT %I FROM auth.%I WHERE %1$I IS NOT NULL', a.attname, c.relname)
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
         WHERE c.relnamespace = 'auth'::regnamespace AND c.relkind = 'r'
           AND a.atttypid = 'bytea'::regtype AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .await;
    assert!(
        columns.len() >= 4,
        "keys, hashes, seals, grace keys: {columns:?}"
    );
    let mut values = Vec::new();
    for sql in columns {
        values.extend(column::<Vec<u8>>(client, &sql).await);
    }
    values
}

/// Candidate secrets for the live generation from a backup and an old token:
/// every 32-byte piece of every stored value, and every successor seal
/// unwrapped with the grace keys in the backup, then opened with the old
/// token's secret as the client would.
async fn candidates(client: &Client, stored: &[Vec<u8>], old: &Parts) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = stored
        .iter()
        .flat_map(|v| {
            v.windows(32)
                .step_by(8)
                .map(<[u8]>::to_vec)
                .collect::<Vec<_>>()
        })
        .collect();
    let opened: Vec<Option<Vec<u8>>> = column(
        client,
        &format!(
            "SELECT auth._unwrap_seal(t.successor_seal, t.session_id, t.generation)
             FROM auth.refresh_tokens t WHERE t.session_id = '{}' AND t.successor_seal IS NOT NULL",
            old.session
        ),
    )
    .await;
    for client_seal in opened.into_iter().flatten() {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&old.secret).unwrap();
        mac.update(b"token-janitor successor seal v1");
        mac.update(old.session.as_bytes());
        mac.update(&(old.generation + 1).to_be_bytes());
        let pad = mac.finalize().into_bytes();
        out.push(client_seal.iter().zip(pad).map(|(s, p)| s ^ p).collect());
    }
    out
}

/// Tries every candidate as the live generation's secret, with the
/// authenticator the backup's session key gives it; returns how many rotate.
/// Each try is rolled back.
async fn minted(client: &Client, live: &Parts, secrets: &[Vec<u8>]) -> usize {
    let mut rotated = 0;
    for secret in secrets {
        let hash = Sha256::digest(secret).to_vec();
        client.batch_execute("BEGIN").await.unwrap();
        let outcome: String = client
            .query_one(
                "SELECT r.outcome FROM auth.sessions s, auth.rotate_token(
                     p_session_id => $1, p_generation => $2, p_token_hash => $3,
                     p_new_token_hash => $4, p_ttl => '1 hour', p_now => now(),
                     p_authenticator => auth._authenticator(s.mac_key, $1, $2, $3)) r
                 WHERE s.id = $1",
                &[&live.session, &live.generation, &hash, &random(32)],
            )
            .await
            .unwrap()
            .get(0);
        client.batch_execute("ROLLBACK").await.unwrap();
        rotated += usize::from(outcome == "rotated");
    }
    rotated
}

#[rstest::rstest]
#[tokio::test]
async fn a_leaked_backup_with_an_old_token_mints_nothing_once_the_grace_is_over(
    #[values(false, true)] history: bool,
) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    let store = TokenStore::new(db.url.pool(2));
    let first = store.issue("victim").await.unwrap();
    let Rotation::Rotated(second) = store.rotate(first.token.expose()).await.unwrap() else {
        panic!("first refresh");
    };
    let Rotation::Rotated(live) = store.rotate(second.token.expose()).await.unwrap() else {
        panic!("second refresh");
    };
    let (old, live) = (parts(second.token.expose()), parts(live.token.expose()));
    assert!(old.authenticator.is_some());

    // Within the grace the predecessor opens its successor: that is the
    // grace, and it shows this test can tell when a backup mints a token.
    let stored = everything_stored(&db.client).await;
    let within = candidates(&db.client, &stored, &old).await;
    assert_eq!(minted(&db.client, &live, &within).await, 1);

    // Once the grace is over and its keys are gone (the cleanup run deletes
    // them when no rotation does), the same read mints nothing.
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '1 second'")
        .await
        .unwrap();
    poll(
        "the grace to pass",
        std::time::Duration::from_secs(10),
        || async {
            db.client
                .batch_execute("CALL auth.run_token_cleanup()")
                .await
                .unwrap();
            let keys: i64 = column(&db.client, "SELECT count(*) FROM auth.grace_keys").await[0];
            (keys == 0).then_some(())
        },
    )
    .await;
    let stored = everything_stored(&db.client).await;
    let after = candidates(&db.client, &stored, &old).await;
    assert!(after.len() >= 10, "{} candidates", after.len());
    assert_eq!(minted(&db.client, &live, &after).await, 0);
    // Nor does the first token, which never sealed the live one.
    let oldest = parts(first.token.expose());
    let from_first = candidates(&db.client, &stored, &oldest).await;
    assert_eq!(minted(&db.client, &live, &from_first).await, 0);
}

/// The database's MAC is HMAC-SHA256 (RFC 2104), checked against the hmac
/// crate for keys of every length up to a block and a few messages.
#[tokio::test]
async fn the_authenticator_is_hmac_sha256() {
    let db = TestDb::migrated().await;
    for key_len in [0usize, 1, 16, 32, 63, 64] {
        for message in [&b""[..], b"abc", &[7u8; 200]] {
            let key = random(key_len);
            let ours: Vec<u8> = db
                .client
                .query_one(
                    "SELECT auth._mac(auth._mac_pads($1), $2)",
                    &[&key, &message],
                )
                .await
                .unwrap()
                .get(0);
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key).unwrap();
            mac.update(message);
            assert_eq!(
                ours,
                mac.finalize().into_bytes().to_vec(),
                "key {key_len} bytes"
            );
        }
    }
}
