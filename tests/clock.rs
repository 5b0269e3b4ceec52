//! The application never chooses the clock: its role executes only the
//! server-clock forms, which read the time of the call (not the start of the
//! caller's transaction or statement), and every lifetime is positive and at
//! most max_ttl, compared as times.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use token_janitor::RevokeReason;
use token_janitor::Rotation;
use token_janitor::store::{
    issue_with, revoke_session_with, revoke_user_sessions_with, rotate_with,
};
use tokio_postgres::IsolationLevel;
use tokio_postgres::error::SqlState;

#[tokio::test]
async fn the_application_role_cannot_drive_the_clock_on_any_path() {
    let db = TestDb::migrated().await;
    let victim = issue(&db.client, "victim", "g0", DAY, at(0)).await;
    let (role, _url, app) = member_of(&db, "token_janitor_app").await;
    all_denied(
        &app,
        &[
            "SELECT * FROM auth.issue_token(p_user_id => 'x', p_token_hash => sha256('x'),
                 p_ttl => '1 day', p_now => 'infinity')",
            &format!(
                "SELECT * FROM auth.rotate_token(p_session_id => '{victim}', p_generation => 0,
                     p_token_hash => sha256('g0'), p_new_token_hash => sha256('g1'),
                     p_ttl => '1 day', p_now => '1999-01-01')"
            ),
            &format!(
                "SELECT auth.revoke_session(p_session_id => '{victim}', p_now => '2999-01-01')"
            ),
            "SELECT auth.revoke_user_sessions(p_user_id => 'victim', p_now => '2999-01-01')",
            &format!(
                "SELECT auth.revoke_user_sessions(p_user_id => 'victim', p_now => '2999-01-01',
                     p_except_session_id => '{victim}')"
            ),
            "SELECT * FROM auth.issue_token(p_user_id => 'x', p_token_hash => sha256('x'),
                 p_ttl => '1 day', p_now => 'infinity', p_client_id => 'c', p_device_label => 'd')",
            &format!(
                "SELECT * FROM auth.rotate_token(p_session_id => '{victim}', p_generation => 0,
                     p_token_hash => sha256('g0'), p_new_token_hash => sha256('g1'),
                     p_ttl => '1 day', p_now => '1999-01-01', p_client_id => 'c')"
            ),
            "SELECT * FROM auth.purge_refresh_tokens(p_now => '2999-01-01')",
        ],
    )
    .await;
    // The server-clock forms work, and the session keeps the server's time
    // at the call.
    let issued: (uuid::Uuid, bool) = {
        let row = app
            .query_one(
                "SELECT session_id, expires_at BETWEEN statement_timestamp() + interval '1 day'
                                               AND clock_timestamp() + interval '1 day'
                 FROM auth.issue_token(p_user_id => 'app', p_token_hash => sha256('a'), p_ttl => '1 day')",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert!(issued.1);
    drop_member(&db, &role, app).await;
}

#[rstest::rstest]
#[case::zero("0")]
#[case::negative("-1 day")]
#[case::over_max_ttl("1 year 1 second")]
#[case::a_century("100 years")]
#[tokio::test]
async fn lifetimes_out_of_range_are_refused_naming_max_ttl(#[case] ttl: &str) {
    let db = TestDb::migrated().await;
    let victim = issue(&db.client, "victim", "g0", DAY, at(0)).await;
    let (role, _url, app) = member_of(&db, "token_janitor_app").await;
    for sql in [
        format!(
            "SELECT * FROM auth.issue_token(p_user_id => 'x', p_token_hash => sha256('x'), p_ttl => '{ttl}')"
        ),
        format!(
            "SELECT * FROM auth.rotate_token(p_session_id => '{victim}', p_generation => 0,
                 p_token_hash => sha256('g0'), p_new_token_hash => sha256('g1'), p_ttl => '{ttl}')"
        ),
    ] {
        let err = app.batch_execute(&sql).await.expect_err(&sql);
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.code(), &SqlState::INVALID_PARAMETER_VALUE, "{sql}");
        assert!(
            db_err.message().contains("max_ttl (1 year)") && db_err.message().contains("p_ttl"),
            "{}",
            db_err.message()
        );
    }
    assert_eq!(counts(&db.client).await, (1, 1), "nothing was written");
    drop_member(&db, &role, app).await;
}

#[tokio::test]
async fn max_ttl_is_a_policy_setting_and_a_driven_clock_must_be_finite() {
    let db = TestDb::migrated().await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET max_ttl = '2 hours'")
        .await
        .unwrap();
    issue(&db.client, "u", "a", 2 * HOUR, at(0)).await;
    let err = db
        .client
        .batch_execute(
            "SELECT * FROM auth.issue_token(p_user_id => 'u', p_token_hash => sha256('b'),
                 p_ttl => '2 hours 1 second', p_now => now())",
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("max_ttl (02:00:00)"), "{err:?}");
    for bad in [
        "UPDATE auth.cleanup_policy SET max_ttl = '0'",
        "UPDATE auth.cleanup_policy SET max_ttl = '11 years'",
    ] {
        let message = refused(&db.client, bad).await;
        assert!(
            message.contains("max_ttl_must_be_between_1_second_and_10_years"),
            "{message}"
        );
    }
    for now in ["infinity", "-infinity"] {
        let message = refused(
            &db.client,
            &format!(
                "SELECT * FROM auth.issue_token(p_user_id => 'u', p_token_hash => sha256('c'),
                     p_ttl => '1 hour', p_now => '{now}')"
            ),
        )
        .await;
        assert!(message.contains("p_now must be a finite time"), "{message}");
    }
}

/// A lifetime is checked as times, not as an interval whose month counts 30
/// days: each field non-negative, and `now + p_ttl` after `now` and not
/// after `now + max_ttl`, in both clock forms of issue and rotate.
#[rstest::rstest]
#[case::months_offset_by_negative_days("3500000 mons -104999640 days", "no negative field")]
#[case::negative_months_offset_by_days("-100 mons 3001 days", "no negative field")]
#[case::negative_time("1 day -1 second", "no negative field")]
#[case::beyond_any_timestamp("178000000 years", "at most max_ttl")]
#[tokio::test]
async fn lifetimes_compare_as_timestamps(#[case] ttl: &str, #[case] reason: &str) {
    let db = TestDb::migrated().await;
    let victim = issue(&db.client, "victim", "g0", DAY, at(0)).await;
    let (role, _url, app) = member_of(&db, "token_janitor_app").await;
    let rotate = |now: &str| {
        format!(
            "SELECT * FROM auth.rotate_token(p_session_id => '{victim}', p_generation => 0,
                 p_token_hash => sha256('g0'), p_new_token_hash => sha256('g1'), p_ttl => '{ttl}'{now})"
        )
    };
    let issue = |now: &str| {
        format!(
            "SELECT * FROM auth.issue_token(p_user_id => 'x', p_token_hash => sha256('x'),
                 p_ttl => '{ttl}'{now})"
        )
    };
    let driven = ", p_now => '2026-01-01 00:00:30+00'";
    for (client, sql) in [
        (&db.client, issue(driven)),
        (&db.client, rotate(driven)),
        (&app, issue("")),
        (&app, rotate("")),
    ] {
        let err = client.batch_execute(&sql).await.expect_err(&sql);
        let db_err = err.as_db_error().unwrap();
        assert_eq!(db_err.code(), &SqlState::INVALID_PARAMETER_VALUE, "{sql}");
        assert!(
            db_err.message().contains(reason)
                && db_err.message().contains("p_ttl")
                && db_err.message().contains("max_ttl (1 year)"),
            "{sql}: {}",
            db_err.message()
        );
    }
    assert_eq!(counts(&db.client).await, (1, 1), "nothing was written");
    drop_member(&db, &role, app).await;
}

/// max_ttl is a length of calendar time: a year from 2027-06-01 is 366 days
/// (2028 is a leap year), a year from 2026-06-01 is 365.
#[tokio::test]
async fn a_lifetime_of_max_ttl_follows_the_calendar() {
    let db = TestDb::migrated().await;
    let expires: Vec<String> = column(
        &db.client,
        "SELECT to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')
         FROM auth.issue_token(p_user_id => 'u', p_token_hash => sha256('a'),
                               p_ttl => '366 days', p_now => '2027-06-01 00:00:00+00')",
    )
    .await;
    assert_eq!(expires, vec!["2028-06-01 00:00"]);
    let message = refused(
        &db.client,
        "SELECT * FROM auth.issue_token(p_user_id => 'u', p_token_hash => sha256('b'),
             p_ttl => '366 days', p_now => '2026-06-01 00:00:00+00')",
    )
    .await;
    assert!(message.contains("at most max_ttl (1 year)"), "{message}");
}

/// Waits until the server's clock (clock_timestamp(), which moves within a
/// transaction) has passed `t`.
async fn until_past<C: tokio_postgres::GenericClient>(client: &C, t: SystemTime) {
    poll(
        "the server's clock to pass the mark",
        Duration::from_secs(20),
        || async {
            let row = client
                .query_one("SELECT clock_timestamp() > $1", &[&t])
                .await
                .unwrap();
            row.get::<_, bool>(0).then_some(())
        },
    )
    .await;
}

/// A transaction (or one long statement) opened before a token expired
/// cannot rotate it afterwards: the server-clock forms read the time of the
/// call, not now() (the transaction's start) nor the statement's start.
#[tokio::test]
async fn a_transaction_opened_before_a_token_expired_cannot_rotate_it_afterwards() {
    let db = TestDb::migrated().await;
    let (role, _url, mut app) = member_of(&db, "token_janitor_app").await;
    let ttl = Duration::from_secs(1);
    let first = issue_with(&app, "ivy", ttl).await.unwrap();
    let tx = app.transaction().await.unwrap();
    let started: SystemTime = tx.query_one("SELECT now()", &[]).await.unwrap().get(0);
    assert!(
        started < first.expires_at,
        "the transaction began before the expiry"
    );
    until_past(&tx, first.expires_at).await;
    let late = rotate_with(&tx, first.token.expose(), ttl).await.unwrap();
    assert!(matches!(late, Rotation::Expired), "{late:?}");
    tx.commit().await.unwrap();

    // One statement that waits past the expiry before it rotates.
    app.batch_execute(
        "CREATE TEMP TABLE outcome (outcome text);
         DO $$
         DECLARE
             v_session uuid;
             v_expires timestamptz;
         BEGIN
             SELECT i.session_id, i.expires_at INTO v_session, v_expires
             FROM auth.issue_token(p_user_id => 'ivy', p_token_hash => sha256('d0'), p_ttl => '1 second') i;
             WHILE clock_timestamp() <= v_expires AND clock_timestamp() < statement_timestamp() + interval '20 seconds' LOOP
                 PERFORM pg_sleep(0.05);
             END LOOP;
             INSERT INTO outcome
             SELECT r.outcome FROM auth.rotate_token(p_session_id => v_session, p_generation => 0,
                 p_token_hash => sha256('d0'), p_new_token_hash => sha256('d1'), p_ttl => '1 second') r;
         END
         $$",
    )
    .await
    .unwrap();
    let outcome: String = app
        .query_one("SELECT outcome FROM outcome", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "expired");
    app.batch_execute("DROP TABLE outcome").await.unwrap();
    drop_member(&db, &role, app).await;
}

/// A Repeatable Read transaction opened within the reuse grace does not
/// receive the successor once the grace is over: it is a replay.
#[tokio::test]
async fn a_snapshot_taken_within_the_grace_does_not_extend_it() {
    let db = TestDb::migrated().await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '2 seconds'")
        .await
        .unwrap();
    let (role, _url, mut app) = member_of(&db, "token_janitor_app").await;
    let ttl = Duration::from_secs(3600);
    let first = issue_with(&app, "joy", ttl).await.unwrap();
    let Rotation::Rotated(second) = rotate_with(&app, first.token.expose(), ttl).await.unwrap()
    else {
        panic!("first refresh");
    };
    let grace_ends = second.expires_at - ttl + Duration::from_secs(2);
    let tx = app
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .unwrap();
    let started: SystemTime = tx.query_one("SELECT now()", &[]).await.unwrap().get(0);
    assert!(
        started < grace_ends,
        "the transaction began within the grace"
    );
    until_past(&tx, grace_ends).await;
    let late = rotate_with(&tx, first.token.expose(), ttl).await.unwrap();
    assert!(matches!(late, Rotation::ReuseDetected), "{late:?}");
    tx.commit().await.unwrap();
    drop_member(&db, &role, app).await;
}

/// Revocations made in a transaction opened earlier carry the time they
/// were made, not the transaction's start.
#[tokio::test]
async fn revocations_carry_the_time_of_the_call() {
    let db = TestDb::migrated().await;
    let (role, _url, mut app) = member_of(&db, "token_janitor_app").await;
    let ttl = Duration::from_secs(3600);
    let one = issue_with(&app, "kim", ttl).await.unwrap();
    issue_with(&app, "lee", ttl).await.unwrap();
    let tx = app.transaction().await.unwrap();
    let started: SystemTime = tx.query_one("SELECT now()", &[]).await.unwrap().get(0);
    let mark = started + Duration::from_millis(200);
    until_past(&tx, mark).await;
    assert_eq!(
        revoke_session_with(&tx, one.session_id, RevokeReason::Logout)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        revoke_user_sessions_with(&tx, "lee", RevokeReason::Admin)
            .await
            .unwrap(),
        1
    );
    tx.commit().await.unwrap();
    let back_dated: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM (SELECT revoked_at FROM auth.sessions
                                   UNION ALL SELECT revoked_at FROM auth.refresh_tokens) r
             WHERE r.revoked_at IS NULL OR r.revoked_at <= $1",
            &[&mark],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(back_dated, 0, "every revocation is later than the mark");
    drop_member(&db, &role, app).await;
}

/// A rotation that waits for another transaction on its family reads the
/// clock once it has the family, not when it began to wait: a transaction
/// the application holds open on the family cannot carry a waiting
/// rotation past the token's expiry.
#[tokio::test]
async fn a_rotation_that_waited_for_its_family_reads_the_clock_after_the_wait() {
    let db = TestDb::migrated().await;
    let (role, url, mut holder) = member_of(&db, "token_janitor_app").await;
    let waiter = url.connect().await.unwrap();
    let ttl = Duration::from_secs(3);
    let first = issue_with(&holder, "max", ttl).await.unwrap();
    // Any call on the family holds its row to the end of the transaction,
    // a forged one too.
    let forged = build(first.session_id, 0, &random(32), None);
    let tx = holder.transaction().await.unwrap();
    let outcome = rotate_with(&tx, &forged, ttl).await.unwrap();
    assert!(matches!(outcome, Rotation::Invalid), "{outcome:?}");
    let waiting = tokio::spawn(async move {
        let outcome = rotate_with(&waiter, first.token.expose(), Duration::from_secs(3600)).await;
        (waiter, outcome)
    });
    poll(
        "the rotation to wait for the family's row",
        Duration::from_secs(20),
        || async {
            let waits: i64 = db
                .client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            (waits == 1).then_some(())
        },
    )
    .await;
    let waiting_since: SystemTime = db
        .client
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        waiting_since < first.expires_at,
        "it waits from before the expiry"
    );
    until_past(&db.client, first.expires_at).await;
    tx.rollback().await.unwrap();
    let (waiter, outcome) = waiting.await.unwrap();
    let outcome = outcome.unwrap();
    assert!(matches!(outcome, Rotation::Expired), "{outcome:?}");
    drop(waiter);
    drop_member(&db, &role, holder).await;
}
