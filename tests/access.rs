//! Least privilege: the application role can only call the lifecycle
//! functions, the monitoring role can run verify and status but read no hash,
//! and a hostile search_path changes nothing.

mod common;

use common::*;
use token_janitor::verify::{Outcome, VerifyOptions, verify};
use token_janitor::{Rotation, TokenStore};

#[tokio::test]
async fn the_application_role_goes_through_functions_only() {
    let db = TestDb::migrated().await;
    let (role, url, client) = member_of(&db, "token_janitor_app").await;

    let store = TokenStore::new(url.pool(2));
    let issued = store.issue("alice").await.unwrap();
    let Rotation::Rotated(next) = store.rotate(issued.token.expose()).await.unwrap() else {
        panic!("rotation as the application role");
    };
    assert_eq!(store.list_sessions("alice").await.unwrap().len(), 1);
    assert_eq!(
        store
            .revoke_session(next.session_id, token_janitor::RevokeReason::Logout)
            .await
            .unwrap(),
        1
    );

    all_denied(
        &client,
        &[
            "SELECT token_hash FROM auth.refresh_tokens",
            "SELECT * FROM auth.sessions",
            "DELETE FROM auth.refresh_tokens",
            "UPDATE auth.cleanup_policy SET batch_size = 1",
            "CALL auth.run_token_cleanup()",
            "SELECT * FROM auth.purge_refresh_tokens()",
        ],
    )
    .await;
    drop_member(&db, &role, client).await;
}

#[tokio::test]
async fn the_monitoring_role_runs_verify_and_status_but_reads_no_hash() {
    let db = TestDb::migrated().await;
    seed_families(&db.client, 50, 3).await;
    let before = counts(&db.client).await;
    let (role, url, client) = member_of(&db, "token_janitor_monitor").await;

    let report = verify(
        &url,
        &VerifyOptions {
            schedule: None,
            ..VerifyOptions::default()
        },
    )
    .await;
    assert!(report.ok, "{report}");
    assert_eq!(
        report
            .checks
            .iter()
            .find(|c| c.name == "self-test")
            .unwrap()
            .outcome,
        Outcome::Pass
    );
    let status = token_janitor::status::status(&client, true, 5)
        .await
        .unwrap();
    assert_eq!(
        status
            .tokens
            .iter()
            .find(|c| c.name == "live")
            .unwrap()
            .rows,
        50
    );

    all_denied(
        &client,
        &[
            "SELECT token_hash FROM auth.refresh_tokens",
            "DELETE FROM auth.refresh_tokens",
            "SELECT * FROM auth.issue_token(p_user_id => 'x', p_token_hash => sha256('x'), p_ttl => '1 day')",
        ],
    )
    .await;
    assert_eq!(counts(&db.client).await, before);
    drop_member(&db, &role, client).await;
}

#[tokio::test]
async fn a_hostile_search_path_changes_nothing() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    c.batch_execute(
        "CREATE SCHEMA evil;
         CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1970-01-01'::timestamptz $$;
         CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE sql AS $$ SELECT '1970-01-01'::timestamptz $$;
         CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE sql AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid $$;
         CREATE FUNCTION evil.length(text) RETURNS integer LANGUAGE sql AS $$ SELECT 1 $$;
         CREATE FUNCTION evil.octet_length(bytea) RETURNS integer LANGUAGE sql AS $$ SELECT 32 $$;
         CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = pg_catalog.byteane);
         CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = pg_catalog.int8mi);
         CREATE OPERATOR evil.>= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = pg_catalog.timestamptz_lt);
         SET search_path = evil, pg_catalog, public;",
    )
    .await
    .unwrap();
    let session: uuid::Uuid = c
        .query_one(
            "SELECT session_id FROM auth.issue_token(p_user_id => 'eve', p_token_hash => sha256('g0'), p_ttl => '1 hour')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!session.is_nil(), "gen_random_uuid was not shadowed");
    let outcome: String = c
        .query_one(
            "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => 0,
                 p_token_hash => sha256('wrong'), p_new_token_hash => sha256('g1'), p_ttl => '1 hour')",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "invalid", "the hash comparison was not shadowed");
    let outcome: String = c
        .query_one(
            "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => 0,
                 p_token_hash => sha256('g0'), p_new_token_hash => sha256('g1'), p_ttl => '1 hour')",
            &[&session],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        outcome, "rotated",
        "now() was not shadowed: the token is live"
    );
    c.batch_execute("UPDATE auth.cleanup_policy SET rotated_retention = '0'")
        .await
        .unwrap();
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let left: i64 = c
        .query_one("SELECT count(*) FROM auth.refresh_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        left, 1,
        "the purge deleted the rotated row and kept the live one"
    );
    let run = c
        .query_one("SELECT status, rotated_deleted FROM auth.cleanup_runs", &[])
        .await
        .unwrap();
    assert_eq!(
        (run.get::<_, &str>(0), run.get::<_, i64>(1)),
        ("ok", 1),
        "the run's own arithmetic was not shadowed"
    );
}
