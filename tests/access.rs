//! Least privilege: token-janitor's objects belong to an owner role that is
//! not a superuser, the application role can only call the lifecycle
//! functions, the monitoring role can run verify and status but reads counts,
//! not people, and a hostile search_path changes nothing.

mod common;

use common::*;
use token_janitor::operator::migrate;
use token_janitor::operator::{Outcome, VerifyOptions, verify};
use token_janitor::{Rotation, Schema, TokenStore};

#[tokio::test]
async fn the_application_role_goes_through_functions_only() {
    let db = TestDb::migrated().await;
    let (role, url, client) = member_of(&db, "token_janitor_app").await;

    let store = TokenStore::new(url.pool(2));
    let issued = store.issue("alice").await.unwrap();
    let Rotation::Rotated(next) = store.rotate(issued.token.expose()).await.unwrap() else {
        panic!("rotation as the application role");
    };
    assert_eq!(
        (issued.user_id.as_str(), next.user_id.as_str()),
        ("alice", "alice")
    );
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
            "SELECT auth._purge_order('rotated', ARRAY[now()])",
            "SELECT auth._purge_estimate('rotated', ARRAY[now()])",
            "SELECT * FROM auth._purge_step(now(), NULL, 1, NULL, NULL, NULL, 'rotated', 'bound')",
            "SELECT auth._purge_compile()",
            "SELECT * FROM auth._run_pace(1, now(), now(), now(), '{}')",
        ],
    )
    .await;
    drop_member(&db, &role, client).await;
}

/// The application role may not read auth.sessions, so rotate_token tells it
/// whose token it rotated, and on no other outcome.
#[tokio::test]
async fn rotate_token_names_the_user_to_the_application_role_only_on_rotated() {
    let db = TestDb::migrated().await;
    let (role, _url, app) = member_of(&db, "token_janitor_app").await;
    let session: uuid::Uuid = app
        .query_one(
            "SELECT session_id FROM auth.issue_token(p_user_id => 'bob', p_token_hash => sha256('b0'),
                 p_ttl => '1 day')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rotate = async |presented: &str, next: &str| -> (String, Option<String>) {
        let row = app
            .query_one(
                "SELECT outcome, user_id FROM auth.rotate_token(p_session_id => $1, p_generation => 0,
                     p_token_hash => sha256(convert_to($2, 'UTF8')),
                     p_new_token_hash => sha256(convert_to($3, 'UTF8')), p_ttl => '1 day')",
                &[&session, &presented, &next],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(rotate("forged", "x").await, ("invalid".to_string(), None));
    assert_eq!(
        rotate("b0", "b1").await,
        ("rotated".to_string(), Some("bob".to_string()))
    );
    // Presented again without a sealed successor: a replay.
    assert_eq!(
        rotate("b0", "b2").await,
        ("reuse_detected".to_string(), None)
    );
    drop_member(&db, &role, app).await;
}

#[tokio::test]
async fn the_monitoring_role_runs_verify_and_status_but_reads_no_id_user_or_hash() {
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
    let status = token_janitor::operator::status(&client, &Schema::default(), true, 5)
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
            "SELECT session_id FROM auth.refresh_tokens",
            "SELECT count(*) FROM auth.refresh_tokens",
            "SELECT id FROM auth.sessions",
            "SELECT user_id FROM auth.sessions",
            "SELECT * FROM auth.list_sessions(p_user_id => 'user-1')",
            "DELETE FROM auth.refresh_tokens",
            "SELECT * FROM auth.issue_token(p_user_id => 'x', p_token_hash => sha256('x'), p_ttl => '1 day')",
            "SELECT auth._purge_order('rotated', ARRAY[now()])",
            "SELECT * FROM auth._purge_step(now(), NULL, 1, NULL, NULL, NULL, 'rotated', 'bound')",
            "SELECT auth._purge_compile()",
            "SELECT * FROM auth._run_pace(1, now(), now(), now(), '{}')",
        ],
    )
    .await;
    assert_eq!(counts(&db.client).await, before);
    drop_member(&db, &role, client).await;
}

/// The monitoring role has none of migrate's pg_cron privileges (no USAGE on
/// schema cron, may not create the extension), and verify's pg_cron check
/// asks for none of them.
#[tokio::test]
async fn the_monitoring_role_verifies_the_schedule_without_migrates_pg_cron_privileges() {
    let mut cron = CronDb::fresh().await;
    migrate(
        &mut cron.client,
        &token_janitor::operator::MigrateOptions::default(),
    )
    .await
    .unwrap();
    let role = format!("tj_login_{}", uuid::Uuid::new_v4().simple());
    cron.client
        .batch_execute(&format!(
            "CREATE ROLE {role} LOGIN IN ROLE token_janitor_monitor"
        ))
        .await
        .unwrap();
    let url = token_janitor::DatabaseUrl::parse(&cli_url(&cron.url, &role)).unwrap();
    let report = verify(&url, &VerifyOptions::default()).await;
    assert!(report.ok, "{report}");
    for check in ["pg_cron", "job"] {
        let found = report.checks.iter().find(|c| c.name == check).unwrap();
        assert_eq!(found.outcome, Outcome::Pass, "{report}");
    }
    cron.client
        .batch_execute(&format!("DROP ROLE {role}"))
        .await
        .unwrap();
}

/// Invariant 7: schema auth, its tables and its routines belong to the owner
/// role, which is no superuser, so no SECURITY DEFINER routine runs as one.
#[tokio::test]
async fn the_owner_role_owns_auth_and_no_security_definer_routine_is_a_superusers() {
    let db = TestDb::migrated().await;
    let owners = owners_in_auth(&db.client).await;
    assert_eq!(owners, vec!["token_janitor_owner"]);
    let definers: Vec<String> = column(
        &db.client,
        "SELECT p.proname || ' superuser=' || r.rolsuper FROM pg_proc p
         JOIN pg_roles r ON r.oid = p.proowner
         WHERE p.pronamespace = 'auth'::regnamespace AND p.prosecdef ORDER BY 1",
    )
    .await;
    assert!(definers.len() >= 9, "{definers:?}");
    assert!(
        definers.iter().all(|d| d.ends_with("superuser=false")),
        "{definers:?}"
    );
}

/// The attack of issue 13 and more: the database's owner, who is not a
/// superuser, puts a schema on the database's search_path whose domains `text` and
/// `timestamptz`, functions `now` and `clock_timestamp` (and a few operators)
/// would record their call and make that owner a superuser if anything in
/// `auth` used them. A superuser then runs everything from a new session
/// under that search_path.
#[tokio::test]
async fn a_hostile_search_path_set_on_the_database_changes_nothing() {
    let db = TestDb::migrated().await;
    let dbo = format!("tj_dbo_{}", uuid::Uuid::new_v4().simple());
    db.client
        .batch_execute(&format!(
            "CREATE ROLE {dbo} NOLOGIN;
             ALTER DATABASE {db} OWNER TO {dbo};
             SET ROLE {dbo};
             CREATE SCHEMA evil;
             GRANT USAGE ON SCHEMA evil TO PUBLIC;
             CREATE TABLE evil.calls (what text);
             GRANT INSERT ON evil.calls TO PUBLIC;
             CREATE FUNCTION evil.pwn(what pg_catalog.text) RETURNS bool LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO evil.calls VALUES (what);
                 EXECUTE 'ALTER ROLE {dbo} SUPERUSER';
                 RETURN true;
             END $$;
             CREATE DOMAIN evil.text AS pg_catalog.text CHECK (evil.pwn('domain text'));
             CREATE DOMAIN evil.timestamptz AS pg_catalog.timestamptz CHECK (evil.pwn('domain timestamptz'));
             CREATE FUNCTION evil.now() RETURNS pg_catalog.timestamptz LANGUAGE sql
                 AS $$ SELECT '1970-01-01'::pg_catalog.timestamptz WHERE evil.pwn('now') $$;
             CREATE FUNCTION evil.clock_timestamp() RETURNS pg_catalog.timestamptz LANGUAGE sql
                 AS $$ SELECT '1970-01-01'::pg_catalog.timestamptz WHERE evil.pwn('clock_timestamp') $$;
             CREATE FUNCTION evil.gen_random_uuid() RETURNS uuid LANGUAGE sql
                 AS $$ SELECT '00000000-0000-0000-0000-000000000000'::uuid WHERE evil.pwn('gen_random_uuid') $$;
             CREATE FUNCTION evil.bytea_ne(bytea, bytea) RETURNS bool LANGUAGE sql
                 AS $$ SELECT evil.pwn('=') AND pg_catalog.byteane($1, $2) $$;
             CREATE OPERATOR evil.= (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = evil.bytea_ne);
             CREATE OPERATOR evil.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = pg_catalog.int8mi);
             CREATE OPERATOR evil.>= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = pg_catalog.timestamptz_lt);
             ALTER DATABASE {db} SET search_path = evil, pg_catalog, public;
             RESET ROLE;",
            db = db.name()
        ))
        .await
        .unwrap();
    // A migrate's own session pins its path from the start; a new superuser
    // session that does not (an application's, a psql) runs everything
    // under the database's search_path.
    migrate(&mut db.connect().await, &no_schedule())
        .await
        .unwrap();
    let client = db.connect_unpinned().await;
    let c = &client;
    let path: Vec<String> = column(c, "SHOW search_path").await;
    assert_eq!(path, vec!["evil, pg_catalog, public"]);

    let session: uuid::Uuid = c
        .query_one(
            "SELECT session_id FROM auth.issue_token(p_user_id => 'eve', p_token_hash => sha256('g0'), p_ttl => '1 hour')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!session.is_nil(), "gen_random_uuid was not shadowed");
    // The second "g0" is a retry within the reuse grace: the seal is
    // wrapped, then unwrapped.
    for (presented, expected) in [("wrong", "invalid"), ("g0", "rotated"), ("g0", "rotated")] {
        let outcome: String = c
            .query_one(
                "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => 0,
                     p_token_hash => sha256($2::bytea), p_new_token_hash => sha256('g1'), p_ttl => '1 hour',
                     p_successor_seal => sha256('sealed g1'))",
                &[&session, &presented.as_bytes()],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(outcome, expected, "presenting {presented}");
    }
    c.batch_execute("UPDATE auth.cleanup_policy SET rotated_retention = '0'")
        .await
        .unwrap();
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    assert_eq!(
        counts(c).await,
        (1, 1),
        "the rotated row went, the live one stayed"
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
    // The purged generation, proven by its authenticator, is a replay.
    c.batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let replay: String = c
        .query_one(
            "SELECT r.outcome FROM auth.sessions s, auth.rotate_token(p_session_id => s.id,
                 p_generation => 0, p_token_hash => sha256('g0'), p_new_token_hash => sha256('x'),
                 p_ttl => '1 hour', p_authenticator => auth._authenticator(s.mac_key, s.id, 0, sha256('g0'))) r",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(replay, "reuse_detected");
    for sql in [
        "SELECT count(*) FROM auth.explain_purge()",
        "SELECT count(*) FROM auth.cleanup_backlog()",
        "SELECT count(*) FROM auth.self_test()",
        "SELECT count(*) FROM auth.cleanup_job()",
        "SELECT count(*) FROM auth.security_event_summary()",
        "SELECT count(*) FROM auth.token_counts(true)",
        "SELECT count(*) FROM auth.purge_targets()",
        "SELECT count(*) FROM auth.purge_refresh_tokens()",
    ] {
        c.query_one(sql, &[]).await.unwrap();
    }
    // status and verify, whose own queries run under the session's path.
    token_janitor::operator::status(c, &Schema::default(), true, 5)
        .await
        .unwrap();
    let path: Vec<String> = column(c, "SHOW search_path").await;
    assert_eq!(
        path,
        vec!["evil, pg_catalog, public"],
        "status puts it back"
    );
    verify(&db.url, &VerifyOptions::default()).await;

    let calls: Vec<String> = column(c, "SELECT what FROM evil.calls").await;
    assert_eq!(
        calls,
        Vec::<String>::new(),
        "nothing in the hostile schema ran"
    );
    let superuser: Vec<bool> = column(
        c,
        &format!("SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = '{dbo}'"),
    )
    .await;
    assert_eq!(
        superuser,
        vec![false],
        "the database owner's role did not change"
    );
    drop(client);
    drop(db);
    drop_roles(&[&dbo]).await;
}

/// A monitor looping over full-table counts keeps one backend busy, not all
/// of them: on a large table exact counts run one at a time and another
/// caller is refused at once; estimates and small tables are free.
#[tokio::test]
async fn exact_counts_on_a_large_table_run_one_at_a_time() {
    let db = TestDb::migrated().await;
    seed_families(&db.client, 10_001, 10).await;
    let (role, _url, monitor) = member_of(&db, "token_janitor_monitor").await;
    let holder = db.connect().await;
    holder.batch_execute("BEGIN").await.unwrap();
    holder
        .batch_execute("SELECT * FROM auth.token_counts(p_exact => true)")
        .await
        .unwrap();
    for sql in [
        "SELECT * FROM auth.token_counts(p_exact => true)",
        "SELECT * FROM auth.cleanup_backlog(p_exact => true)",
    ] {
        let err = monitor.batch_execute(sql).await.expect_err(sql);
        let db_err = err.as_db_error().unwrap();
        assert_eq!(
            db_err.code(),
            &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE
        );
        assert!(
            db_err.message().contains("another exact count is running"),
            "{}",
            db_err.message()
        );
    }
    monitor
        .batch_execute("SELECT * FROM auth.token_counts(p_exact => false)")
        .await
        .unwrap();
    holder.batch_execute("COMMIT").await.unwrap();
    let rows: Vec<i64> = column(
        &monitor,
        "SELECT rows FROM auth.token_counts(p_exact => true) WHERE state = 'live'",
    )
    .await;
    assert_eq!(rows, vec![10_001]);
    drop(holder);
    drop_member(&db, &role, monitor).await;
}
