//! Upgrading a database on the previous release's schema (V1-V3) that holds
//! live rt1_ tokens: they keep rotating (into rt2_ tokens), a genuine replay
//! still reads reuse_detected while its row exists, and once the row is
//! purged neither the genuine rt1_ token nor a forged one can revoke the
//! family. The purge indexes on a timestamp alone give way to the ones
//! that end with the primary key, and the session sweep's index on
//! refresh_expires_at to the one on expiry_floor, which migrate sets for
//! every session it finds.

mod common;

use common::*;
use sha2::Digest;
use token_janitor::operator::migrate;
use token_janitor::{Rotation, TokenStore};

/// A session and its generation-0 token as the previous release wrote them
/// (no MAC key, no seal); returns the rt1_ token string.
async fn legacy_session(client: &tokio_postgres::Client, user: &str) -> String {
    let secret = random(32);
    let now = server_now(client).await;
    let family = Family {
        hashes: vec![sha2::Sha256::digest(&secret).to_vec()],
        ..Family::new(user, now, vec![TokenRow::expiring(plus(now, 30 * DAY))])
    };
    let session = seed(client, &[family]).await[0];
    build(session, 0, &secret, None)
}

#[tokio::test]
async fn live_rt1_tokens_keep_rotating_after_the_upgrade() {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 3).await;
    // The previous release's purge indexes: on the timestamp alone.
    db.client
        .batch_execute(
            "CREATE INDEX refresh_tokens_expires_at_idx ON auth.refresh_tokens (expires_at);
             CREATE INDEX refresh_tokens_rotated_idx ON auth.refresh_tokens (revoked_at)
                 WHERE revoke_reason = 'rotated';
             CREATE INDEX refresh_tokens_revoked_idx ON auth.refresh_tokens (revoked_at)
                 WHERE revoke_reason <> 'rotated';
             CREATE INDEX sessions_refresh_expires_at_idx ON auth.sessions (refresh_expires_at);",
        )
        .await
        .unwrap();
    let kept = legacy_session(&db.client, "kept").await;
    let purged = legacy_session(&db.client, "purged").await;
    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        report.applied,
        vec![
            "V4__trustworthy_tokens",
            "V5__purge_position",
            "V6__pace_by_default",
            "V7__owner_locks",
            "V8__security_event_repeats",
            "V9__session_binding_and_lifetime",
            "V10__token_in_place",
            "V11__deleted_by_kind",
            "V12__session_expiry_floor"
        ]
    );
    let paced: bool = db
        .client
        .query_one("SELECT pace FROM auth.cleanup_policy", &[])
        .await
        .unwrap()
        .get(0);
    assert!(paced, "an install on the old default (off) takes pace on");
    assert_eq!(
        report.indexes_retired,
        vec![
            "refresh_tokens_expires_at_idx",
            "refresh_tokens_rotated_idx",
            "refresh_tokens_revoked_idx",
            "sessions_refresh_expires_at_idx"
        ]
    );
    // Both sessions' floors are their expiry: the sweep's index finds them
    // when they die, instead of reading them on every sweep.
    assert_eq!(report.expiry_floors_set, 2);
    let floors: Vec<bool> = column(
        &db.client,
        "SELECT expiry_floor = refresh_expires_at FROM auth.sessions",
    )
    .await;
    assert_eq!(floors, [true, true]);
    let client = &db.client;
    let indexes = |table: &'static str| async move {
        column::<String>(
            client,
            &format!(
                "SELECT indexrelid::regclass::text FROM pg_index
                 WHERE indrelid = '{table}'::regclass ORDER BY 1"
            ),
        )
        .await
    };
    assert_eq!(
        indexes("auth.sessions").await,
        [
            "auth.sessions_expiry_floor_idx",
            "auth.sessions_pkey",
            "auth.sessions_revoked_at_idx",
            "auth.sessions_user_id_idx"
        ]
    );
    assert_eq!(
        indexes("auth.refresh_tokens").await,
        [
            "auth.refresh_tokens_expired_rows_idx",
            "auth.refresh_tokens_pkey",
            "auth.refresh_tokens_revoked_purge_idx",
            "auth.refresh_tokens_rotated_purge_idx"
        ]
    );
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let store = TokenStore::new(db.url.pool(2));

    // It rotates into an rt2_ token, and its session draws its key.
    let Rotation::Rotated(next) = store.rotate(&kept).await.unwrap() else {
        panic!("a live rt1_ token rotates after the upgrade");
    };
    assert!(next.token.expose().starts_with("rt2_"));
    let keyed: Vec<bool> = column(
        &db.client,
        &format!(
            "SELECT mac_key IS NOT NULL FROM auth.sessions WHERE id = '{}'",
            next.session_id
        ),
    )
    .await;
    assert_eq!(keyed, vec![true]);
    assert!(matches!(
        store.rotate(&kept).await.unwrap(),
        Rotation::ReuseDetected
    ));

    // Once an rt1_ generation's row is purged, it proves nothing: the genuine
    // token and a forgery both read invalid, and the family lives on.
    let Rotation::Rotated(live) = store.rotate(&purged).await.unwrap() else {
        panic!("a live rt1_ token rotates after the upgrade");
    };
    let rotated: i64 = db
        .client
        .query_one(
            "SELECT rotated FROM auth.purge_refresh_tokens(p_now => now() + interval '2 hours')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rotated, 2);
    let forged = build(live.session_id, 0, &random(32), None);
    for token in [&purged, &forged] {
        assert!(matches!(
            store.rotate(token).await.unwrap(),
            Rotation::Invalid
        ));
    }
    assert!(matches!(
        store.rotate(live.token.expose()).await.unwrap(),
        Rotation::Rotated(_)
    ));
}

/// Sessions live on V8 keep working after V9: unbound, unlabelled, without
/// an absolute lifetime; they rotate (as the application role), and the
/// device list shows them with their last use.
#[tokio::test]
async fn sessions_from_v8_keep_rotating_and_are_listed_after_v9() {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 8).await;
    let rotated_before = legacy_session(&db.client, "vic").await;
    let untouched = legacy_session(&db.client, "vic").await;
    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        report.applied,
        vec![
            "V9__session_binding_and_lifetime",
            "V10__token_in_place",
            "V11__deleted_by_kind",
            "V12__session_expiry_floor"
        ]
    );
    let lifetime: Vec<Option<String>> = column(
        &db.client,
        "SELECT max_session_lifetime::text FROM auth.cleanup_policy",
    )
    .await;
    assert_eq!(lifetime, vec![None], "no absolute lifetime on upgrade");

    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));
    let before = store.list_sessions("vic").await.unwrap();
    assert_eq!(before.len(), 2);
    for session in &before {
        assert_eq!(session.last_used_at, session.created_at);
        assert_eq!(
            (
                session.client_id.as_deref(),
                session.device_label.as_deref()
            ),
            (None, None)
        );
    }
    let options = token_janitor::RotateOptions::default()
        .client_id("web")
        .dpop_jkt("NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
    let Rotation::Rotated(next) = store
        .rotate_with_options(&rotated_before, &options)
        .await
        .unwrap()
    else {
        panic!("a session from V8 rotates after V9, whatever binding is presented");
    };
    let after = store.list_sessions("vic").await.unwrap();
    let listed = after
        .iter()
        .find(|s| s.session_id == next.session_id)
        .unwrap();
    assert!(listed.last_used_at > listed.created_at);
    assert_eq!(listed.client_id, None, "a session stays unbound");
    assert!(matches!(
        store.rotate(&untouched).await.unwrap(),
        Rotation::Rotated(_)
    ));
    drop(store);
    drop_member(&db, &role, app).await;
}

/// Upgrading from V9, where every rotation kept a row: the rows from before
/// stay and are purged as before; the first rotation of a live rt2_ token
/// revokes its row from before ('rotated', as the design says of such rows)
/// and the next one is made in place; every older generation, row or not,
/// still reads reuse_detected. A live rt1_ token rotates keeping its row,
/// as it has no authenticator.
#[tokio::test]
async fn rows_from_before_in_place_rotation_are_purged_and_their_sessions_rotate() {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 9).await;
    let c = &db.client;
    let now = server_now(c).await;
    let rotated = Revocation {
        at: plus(now, -3 * 3600),
        reason: Reason::Rotated,
    };
    let family = Family {
        hashes: ["k0", "k1", "k2"].iter().map(|seed| hash(seed)).collect(),
        ..Family::new(
            "kim",
            plus(now, -4 * 3600),
            vec![
                TokenRow {
                    revoked: Some(rotated),
                    ..TokenRow::expiring(plus(now, 30 * DAY))
                },
                TokenRow {
                    revoked: Some(rotated),
                    ..TokenRow::expiring(plus(now, 30 * DAY))
                },
                TokenRow::expiring(plus(now, 30 * DAY)),
            ],
        )
    };
    let keyed = seed(c, &[family]).await[0];
    let legacy = legacy_session(c, "lee").await;
    assert_eq!(counts(c).await, (2, 4), "V9 kept a row per rotation");

    let report = migrate(&mut db.client, &no_schedule()).await.unwrap();
    assert_eq!(
        report.applied,
        vec![
            "V10__token_in_place",
            "V11__deleted_by_kind",
            "V12__session_expiry_floor"
        ]
    );
    let c = &db.client;
    // The key V4 on draws for each new session.
    c.execute(
        "UPDATE auth.sessions SET mac_key = auth._new_mac_key() WHERE id = $1",
        &[&keyed],
    )
    .await
    .unwrap();
    let history: Vec<bool> = column(c, "SELECT token_history FROM auth.cleanup_policy").await;
    assert_eq!(
        history,
        vec![false],
        "rotation in place from the upgrade on"
    );

    // The live rt2_ token's row is from before: kept, revoked 'rotated';
    // its successor's row is then replaced in place.
    let rows = |session: uuid::Uuid| {
        format!(
            "SELECT generation || ':' || coalesce(revoke_reason, '-') FROM auth.refresh_tokens
             WHERE session_id = '{session}' ORDER BY generation"
        )
    };
    assert_eq!(
        rotate(c, keyed, 2, "k2", "k3", 30 * DAY, plus(now, -2 * 3600)).await,
        "rotated"
    );
    assert_eq!(
        column::<String>(c, &rows(keyed)).await,
        ["0:rotated", "1:rotated", "2:rotated", "3:-"]
    );
    assert_eq!(
        rotate(c, keyed, 3, "k3", "k4", 30 * DAY, now).await,
        "rotated"
    );
    assert_eq!(
        column::<String>(c, &rows(keyed)).await,
        ["0:rotated", "1:rotated", "2:rotated", "4:-"]
    );
    // The rows from before are purged as rotated rows (due an hour after
    // their rotation).
    let (_, _, rotated, _) = purge(c, now, None).await;
    assert_eq!(rotated, 3);
    assert_eq!(column::<String>(c, &rows(keyed)).await, ["4:-"]);
    // Generation 3 (rotated in place) and 0 (row purged) read reuse.
    for (generation, seed) in [(3, "k3"), (0, "k0")] {
        c.batch_execute("BEGIN").await.unwrap();
        assert_eq!(
            rotate(c, keyed, generation, seed, "x", 30 * DAY, plus(now, 60)).await,
            "reuse_detected"
        );
        c.batch_execute("ROLLBACK").await.unwrap();
    }

    // The rt1_ token rotates into an rt2_ one, keeping its own row
    // (revoked 'rotated'); its successor then rotates in place.
    let store = TokenStore::new(db.url.pool(2));
    let Rotation::Rotated(next) = store.rotate(&legacy).await.unwrap() else {
        panic!("a live rt1_ token rotates after the upgrade");
    };
    assert_eq!(
        column::<String>(c, &rows(next.session_id)).await,
        ["0:rotated", "1:-"]
    );
    let Rotation::Rotated(_) = store.rotate(next.token.expose()).await.unwrap() else {
        panic!("the rt2_ successor of an rt1_ token rotates");
    };
    assert_eq!(
        column::<String>(c, &rows(next.session_id)).await,
        ["0:rotated", "2:-"]
    );
}
