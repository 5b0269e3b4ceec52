//! The application never chooses the clock: its role executes only the
//! server-clock forms, and every lifetime is positive and at most max_ttl.

mod common;

use common::*;
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
            "SELECT * FROM auth.purge_refresh_tokens(p_now => '2999-01-01')",
        ],
    )
    .await;
    // The server-clock forms work, and the session keeps the server's time.
    let issued: (uuid::Uuid, bool) = {
        let row = app
            .query_one(
                "SELECT session_id, expires_at = now() + interval '1 day'
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
