//! Issue, rotate (every outcome), revoke and list, through the pinned SQL API
//! and through `TokenStore`.

mod common;

use std::time::SystemTime;

use common::*;
use rstest::rstest;
use token_janitor::testing::simulated::{issue_at, rotate_at};
use token_janitor::{Error, RefreshToken, RevokeReason, Rotation, TokenStore};

const TTL: i64 = 30 * DAY;

#[tokio::test]
async fn rotation_issues_the_next_generation_and_advances_the_session() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let s = issue(c, "alice", "g0", TTL, at(0)).await;
    let row = c
        .query_one(
            "SELECT outcome, generation, expires_at, user_id FROM auth.rotate_token(
                 p_session_id => $1, p_generation => 0, p_token_hash => $2,
                 p_new_token_hash => $3, p_ttl => interval '30 days', p_now => $4)",
            &[&s, &hash("g0"), &hash("g1"), &at(15 * MINUTE)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, &str>(0), "rotated");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(
        row.get::<_, std::time::SystemTime>(2),
        at(15 * MINUTE + TTL)
    );
    assert_eq!(row.get::<_, &str>(3), "alice");

    let old = c
        .query_one(
            "SELECT revoked_at, revoke_reason FROM auth.refresh_tokens WHERE session_id = $1 AND generation = 0",
            &[&s],
        )
        .await
        .unwrap();
    assert_eq!(
        old.get::<_, Option<std::time::SystemTime>>(0),
        Some(at(15 * MINUTE))
    );
    assert_eq!(old.get::<_, Option<&str>>(1), Some("rotated"));
    let session = c
        .query_one(
            "SELECT generation, refresh_expires_at FROM auth.sessions WHERE id = $1",
            &[&s],
        )
        .await
        .unwrap();
    assert_eq!(session.get::<_, i32>(0), 1);
    assert_eq!(
        session.get::<_, std::time::SystemTime>(1),
        at(15 * MINUTE + TTL)
    );
    assert_eq!(
        rotate(c, s, 1, "g1", "g2", TTL, at(30 * MINUTE)).await,
        "rotated"
    );
}

/// Each non-rotating outcome, and what it does to the session.
#[rstest]
#[case::unknown_session("unknown")]
#[case::newer_generation("unknown_generation")]
#[case::wrong_hash("invalid")]
#[case::replay_of_rotated("reuse_detected")]
#[case::expired("expired")]
#[case::revoked("revoked")]
#[tokio::test]
async fn rotate_outcomes(#[case] case: &str) {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let s = issue(c, "bob", "g0", TTL, at(0)).await;
    assert_eq!(
        rotate(c, s, 0, "g0", "g1", TTL, at(MINUTE)).await,
        "rotated"
    );
    let (outcome, session_revoked) = match case {
        "unknown" => (
            rotate(c, uuid::Uuid::new_v4(), 0, "g0", "x", TTL, at(2 * MINUTE)).await,
            None,
        ),
        "unknown_generation" => (rotate(c, s, 5, "g1", "x", TTL, at(2 * MINUTE)).await, None),
        "invalid" => (
            rotate(c, s, 1, "wrong", "x", TTL, at(2 * MINUTE)).await,
            None,
        ),
        "reuse_detected" => (
            rotate(c, s, 0, "g0", "x", TTL, at(2 * MINUTE)).await,
            Some("reuse_detected"),
        ),
        "expired" => (
            rotate(c, s, 1, "g1", "x", TTL, at(MINUTE + TTL + 1)).await,
            None,
        ),
        "revoked" => {
            c.query_one(
                "SELECT auth.revoke_session(p_session_id => $1, p_reason => 'logout', p_now => $2)",
                &[&s, &at(2 * MINUTE)],
            )
            .await
            .unwrap();
            (
                rotate(c, s, 1, "g1", "x", TTL, at(3 * MINUTE)).await,
                Some("logout"),
            )
        }
        _ => unreachable!(),
    };
    let expected = if case == "unknown_generation" {
        "unknown"
    } else {
        case
    };
    assert_eq!(outcome, expected);

    let session = c
        .query_one(
            "SELECT generation, revoke_reason FROM auth.sessions WHERE id = $1",
            &[&s],
        )
        .await
        .unwrap();
    assert_eq!(
        session.get::<_, i32>(0),
        1,
        "no outcome but rotated issues a token"
    );
    assert_eq!(session.get::<_, Option<&str>>(1), session_revoked);
    let live: i64 = c
        .query_one(
            "SELECT count(*) FROM auth.refresh_tokens WHERE session_id = $1 AND revoked_at IS NULL",
            &[&s],
        )
        .await
        .unwrap()
        .get(0);
    let expect_live = if session_revoked.is_some() { 0 } else { 1 };
    assert_eq!(live, expect_live);
}

#[rstest]
#[tokio::test]
async fn a_replay_revokes_the_whole_family_and_the_thiefs_branch_dies(
    #[values(false, true)] history: bool,
) {
    let db = TestDb::migrated().await;
    let c = &db.client;
    set_token_history(c, history).await;
    let s = issue(c, "carol", "g0", TTL, at(0)).await;
    assert_eq!(
        rotate(c, s, 0, "g0", "g1", TTL, at(MINUTE)).await,
        "rotated"
    );
    assert_eq!(
        rotate(c, s, 1, "g1", "g2", TTL, at(2 * MINUTE)).await,
        "rotated"
    );
    // The thief replays g0: the session dies, so the holder of g2 is locked out too.
    assert_eq!(
        rotate(c, s, 0, "g0", "x", TTL, at(3 * MINUTE)).await,
        "reuse_detected"
    );
    assert_eq!(
        rotate(c, s, 2, "g2", "g3", TTL, at(4 * MINUTE)).await,
        "revoked"
    );
    // Replaying a rotated token keeps reading reuse_detected.
    assert_eq!(
        rotate(c, s, 1, "g1", "x", TTL, at(5 * MINUTE)).await,
        "reuse_detected"
    );
    let reasons: Vec<(i32, Option<String>)> = c
        .query(
            "SELECT generation, revoke_reason FROM auth.refresh_tokens WHERE session_id = $1 ORDER BY generation",
            &[&s],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut expected = vec![(2, Some("reuse_detected".into()))];
    if history {
        expected.splice(
            0..0,
            [(0, Some("rotated".into())), (1, Some("rotated".into()))],
        );
    }
    assert_eq!(reasons, expected, "token_history {history}");
}

#[tokio::test]
async fn concurrent_rotations_of_one_token_give_exactly_one_rotated() {
    let db = TestDb::migrated().await;
    let s = issue(&db.client, "dave", "g0", TTL, at(0)).await;
    for round in 0..10 {
        let (a, b) = (db.connect().await, db.connect().await);
        let (seed, next) = (format!("g{round}"), format!("g{}", round + 1));
        let (first, second) = tokio::join!(
            rotate(&a, s, round, &seed, &next, TTL, at(MINUTE)),
            rotate(&b, s, round, &seed, &next, TTL, at(MINUTE)),
        );
        let mut outcomes = [first, second];
        outcomes.sort();
        assert_eq!(
            outcomes,
            ["reuse_detected".to_string(), "rotated".to_string()]
        );
        // The loser was a replay: the family is gone; start a new one.
        let revoked: Option<String> = db
            .client
            .query_one(
                "SELECT revoke_reason FROM auth.sessions WHERE id = $1",
                &[&s],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(revoked.as_deref(), Some("reuse_detected"));
        db.client
            .batch_execute(&format!(
                "UPDATE auth.sessions SET revoked_at = NULL, revoke_reason = NULL WHERE id = '{s}';
                 UPDATE auth.refresh_tokens SET revoked_at = NULL, revoke_reason = NULL
                 WHERE session_id = '{s}' AND revoke_reason = 'reuse_detected'"
            ))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn revoke_session_revokes_its_tokens_once() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let s = issue(c, "erin", "g0", TTL, at(0)).await;
    assert_eq!(
        rotate(c, s, 0, "g0", "g1", TTL, at(MINUTE)).await,
        "rotated"
    );
    let revoke = "SELECT auth.revoke_session(p_session_id => $1, p_reason => 'admin', p_now => $2)";
    let first: i32 = c
        .query_one(revoke, &[&s, &at(2 * MINUTE)])
        .await
        .unwrap()
        .get(0);
    let second: i32 = c
        .query_one(revoke, &[&s, &at(3 * MINUTE)])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        (first, second),
        (1, 0),
        "only the live token is revoked, and only once"
    );
    let row = c
        .query_one(
            "SELECT revoked_at, revoke_reason FROM auth.sessions WHERE id = $1",
            &[&s],
        )
        .await
        .unwrap();
    assert_eq!(
        row.get::<_, Option<std::time::SystemTime>>(0),
        Some(at(2 * MINUTE))
    );
    assert_eq!(row.get::<_, Option<&str>>(1), Some("admin"));
    let default_reason: Option<String> = {
        let s2 = issue(c, "erin", "h0", TTL, at(0)).await;
        c.query_one("SELECT auth.revoke_session(p_session_id => $1)", &[&s2])
            .await
            .unwrap();
        c.query_one(
            "SELECT revoke_reason FROM auth.sessions WHERE id = $1",
            &[&s2],
        )
        .await
        .unwrap()
        .get(0)
    };
    assert_eq!(default_reason.as_deref(), Some("logout"));
}

#[tokio::test]
async fn revoke_user_sessions_revokes_only_that_users_live_sessions() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let a1 = issue(c, "frank", "a1", TTL, at(0)).await;
    issue(c, "frank", "a2", TTL, at(0)).await;
    issue(c, "frank", "a3", TTL, at(0)).await;
    let other = issue(c, "grace", "b1", TTL, at(0)).await;
    c.query_one("SELECT auth.revoke_session(p_session_id => $1)", &[&a1])
        .await
        .unwrap();
    let revoked: i32 = c
        .query_one(
            "SELECT auth.revoke_user_sessions(p_user_id => 'frank', p_reason => 'admin', p_now => $1)",
            &[&at(MINUTE)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(revoked, 2);
    let reasons: Vec<(String, Option<String>)> = c
        .query(
            "SELECT user_id, revoke_reason FROM auth.sessions ORDER BY user_id, revoke_reason",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        reasons,
        vec![
            ("frank".into(), Some("admin".into())),
            ("frank".into(), Some("admin".into())),
            ("frank".into(), Some("logout".into())),
            ("grace".into(), None),
        ]
    );
    assert_eq!(
        rotate(c, other, 0, "b1", "b2", TTL, at(2 * MINUTE)).await,
        "rotated"
    );
}

#[rstest]
#[case::null_hash(
    "SELECT * FROM auth.issue_token(p_user_id => 'u', p_token_hash => NULL, p_ttl => '1 day')",
    "p_token_hash"
)]
#[case::oversized_hash(
    "SELECT * FROM auth.issue_token(p_user_id => 'u', p_token_hash => decode(repeat('ab', 65), 'hex'), p_ttl => '1 day')",
    "p_token_hash"
)]
#[case::empty_user(
    "SELECT * FROM auth.issue_token(p_user_id => '', p_token_hash => sha256('x'), p_ttl => '1 day')",
    "p_user_id"
)]
#[case::negative_ttl(
    "SELECT * FROM auth.issue_token(p_user_id => 'u', p_token_hash => sha256('x'), p_ttl => '-1 day')",
    "p_ttl"
)]
#[case::bad_reason(
    "SELECT auth.revoke_user_sessions(p_user_id => 'u', p_reason => 'bored')",
    "p_reason"
)]
#[case::oversized_user(
    "SELECT * FROM auth.issue_token(p_user_id => repeat('u', 300), p_token_hash => sha256('x'), p_ttl => '1 day')",
    "p_user_id"
)]
#[case::rotate_null_new_hash(
    "SELECT * FROM auth.rotate_token(p_session_id => (SELECT id FROM auth.sessions), p_generation => 1,
         p_token_hash => sha256('g1'), p_new_token_hash => NULL, p_ttl => '1 day')",
    "p_new_token_hash"
)]
#[case::rotate_oversized_hash(
    "SELECT * FROM auth.rotate_token(p_session_id => (SELECT id FROM auth.sessions), p_generation => 1,
         p_token_hash => decode(repeat('ab', 100), 'hex'), p_new_token_hash => sha256('x'), p_ttl => '1 day')",
    "p_token_hash"
)]
#[case::rotate_zero_ttl(
    "SELECT * FROM auth.rotate_token(p_session_id => (SELECT id FROM auth.sessions), p_generation => 1,
         p_token_hash => sha256('g1'), p_new_token_hash => sha256('x'), p_ttl => '0')",
    "p_ttl"
)]
#[case::revoke_null_reason(
    "SELECT auth.revoke_session(p_session_id => (SELECT id FROM auth.sessions), p_reason => NULL)",
    "p_reason"
)]
#[tokio::test]
async fn bad_arguments_are_refused_by_name_and_write_nothing(
    #[case] sql: &str,
    #[case] names: &str,
) {
    let db = TestDb::migrated().await;
    let s = issue(&db.client, "u", "g0", DAY, at(0)).await;
    assert_eq!(
        rotate(&db.client, s, 0, "g0", "g1", DAY, at(60)).await,
        "rotated"
    );
    let before = snapshot(&db.client).await;
    let message = refused(&db.client, sql).await;
    assert!(message.contains(names), "{message:?} does not name {names}");
    assert_eq!(snapshot(&db.client).await, before, "nothing was written");
}

/// Every row of both token tables, as text.
async fn snapshot(client: &tokio_postgres::Client) -> Vec<String> {
    column(client, "SELECT s::text FROM auth.sessions s UNION ALL SELECT t::text FROM auth.refresh_tokens t ORDER BY 1").await
}

#[tokio::test]
async fn missing_selectors_get_documented_outcomes() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let s = issue(c, "u", "g0", DAY, at(0)).await;
    let before = snapshot(c).await;
    for (session, generation) in [("NULL", "0"), ("$1", "NULL"), ("$1", "-1")] {
        let outcome: String = c
            .query_one(
                &format!(
                    "SELECT outcome FROM auth.rotate_token(p_session_id => {session}::uuid, p_generation => {generation},
                         p_token_hash => sha256('g0'), p_new_token_hash => sha256('g1'), p_ttl => '1 day')
                     WHERE $1::uuid IS NOT NULL"
                ),
                &[&s],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            outcome, "unknown",
            "session {session}, generation {generation}"
        );
    }
    let revoked: i32 = c
        .query_one("SELECT auth.revoke_session(p_session_id => NULL)", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(revoked, 0);
    let listed = c
        .query("SELECT * FROM auth.list_sessions(p_user_id => NULL)", &[])
        .await
        .unwrap();
    assert!(listed.is_empty());
    assert_eq!(snapshot(c).await, before);
}

#[tokio::test]
async fn token_store_round_trip_and_malformed_tokens() {
    let db = TestDb::migrated().await;
    let store = TokenStore::new(db.url.pool(4));
    let first = store.issue("heidi").await.unwrap();
    assert!(first.token.expose().starts_with("rt2_"));
    let Rotation::Rotated(second) = store.rotate(first.token.expose()).await.unwrap() else {
        panic!("a fresh token rotates");
    };
    assert_eq!(
        (second.session_id, second.generation, first.user_id.as_str()),
        (first.session_id, 1, "heidi")
    );
    assert_eq!(second.user_id, "heidi");
    // Presented again within the reuse grace (a lost response): the same
    // successor. Without the grace, a replay.
    let Rotation::Rotated(again) = store.rotate(first.token.expose()).await.unwrap() else {
        panic!("a retry within the grace gets the successor");
    };
    assert_eq!(again.token, second.token);
    assert_eq!(again.user_id, "heidi");
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    assert!(matches!(
        store.rotate(first.token.expose()).await.unwrap(),
        Rotation::ReuseDetected
    ));
    assert!(matches!(
        store.rotate(second.token.expose()).await.unwrap(),
        Rotation::Revoked
    ));

    // Nothing about the token reaches the database: only its hash.
    let stored: Vec<u8> = db
        .client
        .query_one(
            "SELECT token_hash FROM auth.refresh_tokens WHERE session_id = $1 AND generation = 1",
            &[&second.session_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored.len(), 32);
    // Debug output shows neither the token nor the session it selects.
    for debug in [
        format!("{second:?}"),
        format!("{:?}", RefreshToken::parse(second.token.expose()).unwrap()),
        format!("{:?}", store.list_sessions("heidi").await.unwrap()),
    ] {
        assert!(!debug.contains(second.token.expose()), "{debug}");
        assert!(!debug.contains(&second.session_id.to_string()), "{debug}");
    }

    for bad in [
        "",
        "rt1_",
        "garbage",
        "rt1_!!!!",
        &first.token.expose()[..20],
    ] {
        assert!(
            matches!(store.rotate(bad).await, Err(Error::MalformedToken(_))),
            "{bad:?}"
        );
    }

    let third = store.issue("heidi").await.unwrap();
    let sessions = store.list_sessions("heidi").await.unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(
        store
            .revoke_user_sessions("heidi", RevokeReason::Admin)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        store
            .revoke_session(third.session_id, RevokeReason::Logout)
            .await
            .unwrap(),
        0
    );
}

/// A logout endpoint receives the refresh token: it finds the session to
/// revoke from the string alone.
#[tokio::test]
async fn a_presented_token_names_the_session_to_sign_out() {
    let db = TestDb::migrated().await;
    let store = TokenStore::new(db.url.pool(2));
    let phone = store.issue("kate").await.unwrap();
    let laptop = store.issue("kate").await.unwrap();
    let presented = RefreshToken::parse(phone.token.expose()).unwrap();
    assert_eq!(presented.session_id(), phone.session_id);
    assert_eq!(
        store
            .revoke_session(presented.session_id(), RevokeReason::Logout)
            .await
            .unwrap(),
        1
    );
    assert!(matches!(
        store.rotate(phone.token.expose()).await.unwrap(),
        Rotation::Revoked
    ));
    assert!(matches!(
        store.rotate(laptop.token.expose()).await.unwrap(),
        Rotation::Rotated(_)
    ));
    let err = RefreshToken::parse(&phone.token.expose()[1..]).unwrap_err();
    assert!(matches!(err, Error::MalformedToken(_)));
    assert_eq!(
        err.to_string(),
        "malformed refresh token: it does not start with rt2_ or rt1_"
    );
}

/// An application that builds its own pool from the crates token_janitor
/// re-exports hands it to TokenStore: the same types, no second copy to pin.
#[tokio::test]
async fn a_pool_from_the_reexported_crates_serves_a_token_store() {
    use token_janitor::deadpool_postgres::{Manager, Pool};
    use token_janitor::tokio_postgres::NoTls;

    let db = TestDb::migrated().await;
    let pool = Pool::builder(Manager::new(db.url.config().clone(), NoTls))
        .max_size(1)
        .build()
        .unwrap();
    let store = TokenStore::new(pool);
    let issued = store.issue("leo").await.unwrap();
    let Rotation::Rotated(next) = store.rotate(issued.token.expose()).await.unwrap() else {
        panic!("a fresh token rotates on the application's own pool");
    };
    assert_eq!((next.user_id.as_str(), next.generation), ("leo", 1));
}

#[tokio::test]
async fn twins_compose_inside_a_caller_transaction() {
    let mut db = TestDb::migrated().await;
    let tx = db.client.transaction().await.unwrap();
    let issued = issue_at(&tx, "ivan", std::time::Duration::from_secs(60), at(0))
        .await
        .unwrap();
    let rotated = rotate_at(
        &tx,
        issued.token.expose(),
        std::time::Duration::from_secs(60),
        at(30),
    )
    .await
    .unwrap();
    assert!(matches!(rotated, Rotation::Rotated(_)));
    tx.rollback().await.unwrap();
    assert_eq!(counts(&db.client).await, (0, 0));
}

#[tokio::test]
async fn list_sessions_is_bounded() {
    let db = TestDb::migrated().await;
    for i in 0..3 {
        issue(&db.client, "ivy", &format!("t{i}"), DAY, at(i)).await;
    }
    let listed = |limit: i32| {
        let client = &db.client;
        async move {
            client
                .query(
                    "SELECT * FROM auth.list_sessions(p_user_id => 'ivy', p_limit => $1)",
                    &[&limit],
                )
                .await
        }
    };
    assert_eq!(listed(2).await.unwrap().len(), 2);
    assert_eq!(listed(1000).await.unwrap().len(), 3);
    for bad in [0, 1001] {
        let err = listed(bad).await.unwrap_err();
        assert!(
            format!("{err:?}").contains("p_limit must be between 1 and 1000"),
            "{err:?}"
        );
    }
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    column::<i32>(client, "SELECT pg_backend_pid()").await[0]
}

/// "Sign out everywhere" racing a new login of the same user: the login is
/// either revoked by it or issued after it commits, never a survivor.
#[tokio::test]
async fn a_login_racing_sign_out_everywhere_never_survives_it() {
    let db = TestDb::migrated().await;
    let (login, signout) = (db.connect().await, db.connect().await);
    let waiting = |pid: i32| {
        let client = &db.client;
        async move {
            let waits: Vec<bool> = column(
                client,
                &format!(
                    "SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = {pid}"
                ),
            )
            .await;
            (waits == vec![true]).then_some(())
        }
    };
    // A login in flight: sign-out waits for it, then revokes it.
    login.batch_execute("BEGIN").await.unwrap();
    login
        .batch_execute("SELECT * FROM auth.issue_token(p_user_id => 'jo', p_token_hash => sha256('a'), p_ttl => '1 day')")
        .await
        .unwrap();
    let signout_pid = backend_pid(&signout).await;
    let revoke = tokio::spawn(async move {
        let revoked: i32 = signout
            .query_one("SELECT auth.revoke_user_sessions(p_user_id => 'jo')", &[])
            .await
            .unwrap()
            .get(0);
        (signout, revoked)
    });
    poll(
        "sign-out to wait for the login",
        std::time::Duration::from_secs(10),
        || waiting(signout_pid),
    )
    .await;
    login.batch_execute("COMMIT").await.unwrap();
    let (signout, revoked) = revoke.await.unwrap();
    assert_eq!(revoked, 1, "the login that was in flight is revoked");

    // A sign-out in flight: the login waits for it and survives it.
    signout.batch_execute("BEGIN").await.unwrap();
    signout
        .batch_execute("SELECT auth.revoke_user_sessions(p_user_id => 'jo')")
        .await
        .unwrap();
    let login_pid = backend_pid(&login).await;
    let issue = tokio::spawn(async move {
        login
            .batch_execute("SELECT * FROM auth.issue_token(p_user_id => 'jo', p_token_hash => sha256('b'), p_ttl => '1 day')")
            .await
            .unwrap();
    });
    poll(
        "the login to wait for sign-out",
        std::time::Duration::from_secs(10),
        || waiting(login_pid),
    )
    .await;
    signout.batch_execute("COMMIT").await.unwrap();
    issue.await.unwrap();
    let live: Vec<i64> = column(
        &db.client,
        "SELECT count(*) FROM auth.sessions WHERE user_id = 'jo' AND revoked_at IS NULL",
    )
    .await;
    assert_eq!(live, vec![1], "the login after sign-out lives");
}

#[tokio::test]
async fn a_refused_call_keeps_the_server_error_as_its_source() {
    let db = TestDb::migrated().await;
    let store = TokenStore::new(db.url.pool(1));
    let err = store.issue("").await.unwrap_err();
    assert!(matches!(err, Error::Db { .. }), "{err:?}");
    assert_eq!(
        err.sqlstate(),
        Some(&tokio_postgres::error::SqlState::INVALID_PARAMETER_VALUE)
    );
    let source = std::error::Error::source(&err).expect("a source");
    let driver = source
        .downcast_ref::<tokio_postgres::Error>()
        .expect("the driver's error");
    assert!(
        driver
            .as_db_error()
            .unwrap()
            .message()
            .contains("p_user_id must be 1 to 256 characters")
    );
}

/// RFC 7009 revocation by a presented token, as the application role, in
/// both modes of `token_history`: a genuine token revokes its family, the
/// live one or one rotated away (proven by its stored row, or by its
/// authenticator once rotation in place kept no row); a forged one (a
/// session id and generation with another secret, whatever authenticator)
/// revokes nothing, so an endpoint anyone may call cannot sign a user out
/// from a session id; a malformed one is refused naming the fault.
#[rstest]
#[tokio::test]
async fn a_revocation_by_token_needs_the_genuine_token(#[values(false, true)] history: bool) {
    let db = TestDb::migrated().await;
    set_token_history(&db.client, history).await;
    let (role, url, client) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));
    let issued = store.issue("alice").await.unwrap();
    let Rotation::Rotated(next) = store.rotate(issued.token.expose()).await.unwrap() else {
        panic!("alice's first refresh");
    };
    for genuine in [&issued, &next] {
        let parts = parts(genuine.token.expose());
        let random_authenticator = random(16);
        for authenticator in [
            parts.authenticator.as_deref(),
            Some(&random_authenticator[..]),
            None,
        ] {
            let forged = build(parts.session, parts.generation, &random(32), authenticator);
            assert!(
                !store
                    .revoke_token(&forged, RevokeReason::Logout)
                    .await
                    .unwrap(),
                "a forgery of generation {}",
                parts.generation
            );
        }
    }
    let live = store.list_sessions("alice").await.unwrap();
    assert!(
        live[0].revoked_at.is_none(),
        "a forged token revoked nothing"
    );
    assert!(matches!(
        store.revoke_token("rt2_nope", RevokeReason::Logout).await,
        Err(Error::MalformedToken(_))
    ));

    assert!(
        store
            .revoke_token(issued.token.expose(), RevokeReason::Logout)
            .await
            .unwrap(),
        "the rotated-away token is genuine"
    );
    assert!(matches!(
        store.rotate(next.token.expose()).await.unwrap(),
        Rotation::Revoked
    ));
    for token in [&issued, &next] {
        assert!(
            !store
                .revoke_token(token.token.expose(), RevokeReason::Logout)
                .await
                .unwrap(),
            "revoked once"
        );
    }
    drop_member(&db, &role, client).await;
}

/// The session is the token: 200 sessions each rotated 20 times (each
/// presenting its authenticator, as TokenStore does) leave one token row
/// per session with the default policy, and 21 with `token_history`; a
/// replay of an older generation still reads reuse_detected in both. Rows
/// that rotate in place take no entry in the expired kind's index (its
/// size stays that of the empty index); a row per token does. A rotation
/// without the authenticator (an rt1_ token) keeps the presented row as a
/// predecessor's, which leaves rotation in place and joins that index.
#[rstest]
#[tokio::test]
async fn rotation_in_place_keeps_one_token_row_per_session(#[values(false, true)] history: bool) {
    let db = TestDb::migrated().await;
    let c = &db.client;
    set_token_history(c, history).await;
    let index_size = || async {
        column::<i64>(
            c,
            "SELECT pg_relation_size('auth.refresh_tokens_expired_rows_idx')",
        )
        .await[0]
    };
    let empty = index_size().await;
    c.batch_execute(
        "SELECT count(*) FROM generate_series(1, 200) k,
             auth.issue_token(p_user_id => 'u' || k, p_token_hash => sha256(convert_to('u' || k || '/0', 'UTF8')),
                              p_ttl => interval '30 days', p_now => now());
         DO $$
         DECLARE
             s record;
         BEGIN
             FOR r IN 1 .. 20 LOOP
                 FOR s IN SELECT * FROM auth.sessions LOOP
                     PERFORM 1 / (x.outcome = 'rotated')::int
                     FROM auth.rotate_token(
                         p_session_id => s.id, p_generation => s.generation,
                         p_token_hash => sha256(convert_to(s.user_id || '/' || s.generation, 'UTF8')),
                         p_new_token_hash => sha256(convert_to(s.user_id || '/' || (s.generation + 1), 'UTF8')),
                         p_ttl => interval '30 days', p_now => now() + r * interval '1 minute',
                         p_authenticator => auth._authenticator(s.mac_key, s.id, s.generation,
                             sha256(convert_to(s.user_id || '/' || s.generation, 'UTF8')))) x;
                 END LOOP;
             END LOOP;
         END
         $$;",
    )
    .await
    .unwrap();
    let (sessions, rows) = counts(c).await;
    assert_eq!(sessions, 200);
    assert_eq!(
        rows,
        if history { 200 * 21 } else { 200 },
        "token_history {history}"
    );
    let generations: Vec<i32> = column(c, "SELECT DISTINCT generation FROM auth.sessions").await;
    assert_eq!(generations, vec![20]);
    // 4,000 entries of 40 bytes would fill dozens of pages.
    if history {
        assert!(index_size().await > empty + 8 * 8192);
    } else {
        assert_eq!(index_size().await, empty);
    }
    let session: uuid::Uuid =
        column(c, "SELECT id FROM auth.sessions WHERE user_id = 'u1'").await[0];
    let outcome: String = c
        .query_one(
            "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => 20,
                 p_token_hash => sha256('u1/20'), p_new_token_hash => sha256('u1/21'),
                 p_ttl => interval '30 days', p_now => now() + interval '1 hour')",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "rotated");
    let in_place: Vec<String> = column(
        c,
        &format!(
            "SELECT generation || ':' || coalesce(revoke_reason, 'live') || ':' || rotates_in_place
             FROM auth.refresh_tokens WHERE session_id = '{session}' AND generation >= 20
             ORDER BY generation"
        ),
    )
    .await;
    assert_eq!(
        in_place,
        [
            "20:rotated:false".to_string(),
            format!("21:live:{}", !history)
        ]
    );
    assert_eq!(
        rotate(c, session, 5, "u1/5", "x", TTL, at(0)).await,
        "reuse_detected"
    );
}

/// A session bound to a client: a rotated-away token, whose row rotation in
/// place did not keep, revokes nothing by its authenticator alone (as in
/// rotate_token, a copied token of a bound session is worth nothing); the
/// live token, whose row is stored, still does.
#[tokio::test]
async fn a_bound_session_is_not_revoked_by_a_rotated_away_token() {
    let db = TestDb::migrated().await;
    let store = TokenStore::new(db.url.pool(2));
    let issued = store
        .issue_with_options(
            "bob",
            &token_janitor::IssueOptions::default().client_id("web"),
        )
        .await
        .unwrap();
    let Rotation::Rotated(next) = store
        .rotate_with_options(
            issued.token.expose(),
            &token_janitor::RotateOptions::default().client_id("web"),
        )
        .await
        .unwrap()
    else {
        panic!("bob's first refresh");
    };
    assert!(
        !store
            .revoke_token(issued.token.expose(), RevokeReason::Logout)
            .await
            .unwrap()
    );
    assert!(
        store
            .revoke_token(next.token.expose(), RevokeReason::Logout)
            .await
            .unwrap()
    );
}

/// The session's expiry floor (V12), read after each step: its value, and
/// whether the step's update of the session row was HOT (no index entry).
async fn floor_after(c: &tokio_postgres::Client, session: uuid::Uuid) -> (SystemTime, i64, i64) {
    let row = c
        .query_one(
            "SELECT s.expiry_floor,
                    pg_stat_get_xact_tuples_updated('auth.sessions'::regclass),
                    pg_stat_get_xact_tuples_hot_updated('auth.sessions'::regclass)
             FROM auth.sessions s WHERE s.id = $1",
            &[&session],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// A rotation moves the session's expiry, which no index holds, and leaves
/// its floor (which one does) until the expiry has run half of
/// expired_retention (1 day: 12 hours) past the floor or fallen below it:
/// so most rotations update the session row HOT. The counts are this
/// transaction's, exact.
#[tokio::test]
async fn rotations_update_the_session_hot_until_its_expiry_leaves_the_floor() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let s = issue(c, "hot", "g0", TTL, at(0)).await;
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(floor_after(c, s).await, (at(TTL), 0, 0));
    // 11 hours on: the expiry is 11 hours past the floor, which stays.
    assert_eq!(
        rotate(c, s, 0, "g0", "g1", TTL, at(11 * HOUR)).await,
        "rotated"
    );
    assert_eq!(floor_after(c, s).await, (at(TTL), 1, 1));
    // 13 hours on: past half the retention, the floor is the expiry again.
    assert_eq!(
        rotate(c, s, 1, "g1", "g2", TTL, at(13 * HOUR)).await,
        "rotated"
    );
    assert_eq!(floor_after(c, s).await, (at(13 * HOUR + TTL), 2, 1));
    // A shorter TTL puts the expiry below the floor: the floor follows.
    assert_eq!(
        rotate(c, s, 2, "g2", "g3", DAY, at(14 * HOUR)).await,
        "rotated"
    );
    assert_eq!(floor_after(c, s).await, (at(14 * HOUR + DAY), 3, 1));
    c.batch_execute("ROLLBACK").await.unwrap();
}

/// The sweep finds a dead session without token rows by its floor, which
/// lags its expiry, and deletes it once its expiry (not its floor) is past
/// expired_retention: not a second before.
#[tokio::test]
async fn the_sweep_deletes_a_session_by_its_expiry_whatever_its_floor() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let s = issue(c, "swept", "g0", TTL, at(0)).await;
    assert_eq!(rotate(c, s, 0, "g0", "g1", TTL, at(HOUR)).await, "rotated");
    assert_eq!(floor_after(c, s).await.0, at(TTL));
    // Its token rows gone (as a session the application held while the
    // purge deleted them leaves it): only the sweep can find it.
    c.execute(
        "DELETE FROM auth.refresh_tokens WHERE session_id = $1",
        &[&s],
    )
    .await
    .unwrap();
    let swept = |now: SystemTime| async move {
        c.query_one(
            "SELECT sessions FROM auth.purge_refresh_tokens(p_now => $1)",
            &[&now],
        )
        .await
        .unwrap()
        .get::<_, i64>(0)
    };
    // The cutoff (now - 1 day) at the expiry: kept, though past the floor.
    assert_eq!(swept(at(HOUR + TTL + DAY)).await, 0);
    assert_eq!(swept(at(HOUR + TTL + DAY + 1)).await, 1);
}
