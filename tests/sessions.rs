//! Sessions as identity teams expect them (issue 26): an absolute lifetime
//! (`max_session_lifetime`), binding to a client and a DPoP key, a device
//! list, "sign out everywhere else", and revocation notices. The
//! application's paths run as the application role.

mod common;

use std::time::{Duration, SystemTime};

use common::*;
use token_janitor::testing::simulated;
use token_janitor::{
    Error, IssueOptions, RevocationNotices, RevokeReason, RotateOptions, Rotation, TokenStore,
};
use tokio_postgres::error::SqlState;

/// A well-formed JWK SHA-256 thumbprint (RFC 7638's example key's).
const JKT: &str = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
/// Another one.
const OTHER_JKT: &str = "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I";

fn rotated(rotation: Rotation) -> token_janitor::Issued {
    match rotation {
        Rotation::Rotated(next) => next,
        other => panic!("expected Rotated, got {other:?}"),
    }
}

/// The server's message of a refused call.
fn server_message(err: &Error) -> String {
    let Error::Db { source, .. } = err else {
        panic!("not a server error: {err:?}");
    };
    assert_eq!(
        err.sqlstate(),
        Some(&SqlState::INVALID_PARAMETER_VALUE),
        "{err:?}"
    );
    source.as_db_error().unwrap().message().to_string()
}

#[tokio::test]
async fn max_session_lifetime_caps_every_expiry_and_then_reads_expired() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let old = simulated::issue_at(c, "ann", Duration::from_secs(DAY as u64), at(0))
        .await
        .unwrap();
    c.batch_execute("UPDATE auth.cleanup_policy SET max_session_lifetime = '2 days'")
        .await
        .unwrap();
    let ttl = Duration::from_secs(DAY as u64);
    // Issued an hour later: its first token already ends within the lifetime.
    let first = simulated::issue_at(c, "ann", Duration::from_secs(3 * DAY as u64), at(HOUR))
        .await
        .unwrap();
    assert_eq!(first.expires_at, at(HOUR + 2 * DAY));

    let start = simulated::issue_at(c, "ann", ttl, at(0)).await.unwrap();
    // Idle expiry stays p_ttl: a rotation a day and a half in ends a day later...
    let a = rotated(
        simulated::rotate_at(c, start.token.expose(), ttl, at(DAY / 2))
            .await
            .unwrap(),
    );
    assert_eq!(a.expires_at, at(DAY / 2 + DAY));
    // ...but never after created_at + 2 days.
    let b = rotated(
        simulated::rotate_at(c, a.token.expose(), ttl, at(DAY + DAY / 2))
            .await
            .unwrap(),
    );
    assert_eq!(b.expires_at, at(2 * DAY));
    assert!(matches!(
        simulated::rotate_at(c, b.token.expose(), ttl, at(2 * DAY))
            .await
            .unwrap(),
        Rotation::Expired
    ));
    // A session issued before the policy was set ends as well, though its
    // token is live.
    assert!(matches!(
        simulated::rotate_at(c, old.token.expose(), ttl, at(2 * DAY + 1))
            .await
            .unwrap(),
        Rotation::Expired
    ));
    let generations: Vec<i32> = column(
        c,
        &format!(
            "SELECT generation FROM auth.sessions WHERE id IN ('{}', '{}') ORDER BY generation",
            old.session_id, b.session_id
        ),
    )
    .await;
    assert_eq!(generations, vec![0, 2], "expired changed nothing");

    for bad in ["'0'", "'-1 day'", "'11 years'"] {
        let message = refused(
            c,
            &format!("UPDATE auth.cleanup_policy SET max_session_lifetime = {bad}"),
        )
        .await;
        assert!(
            message.contains("max_session_lifetime_must_be_between_1_second_and_10_years"),
            "{message}"
        );
    }
}

/// The server-clock forms, as the application role: the cap applies, and
/// once the lifetime is past the session reads expired.
#[tokio::test]
async fn max_session_lifetime_on_the_servers_clock() {
    let db = TestDb::migrated().await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET max_session_lifetime = '2 seconds'")
        .await
        .unwrap();
    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2)).with_ttl(Duration::from_secs(3600));
    let issued = store.issue("bo").await.unwrap();
    let created = store.list_sessions("bo").await.unwrap()[0].created_at;
    assert_eq!(issued.expires_at, created + Duration::from_secs(2));
    // Rotate until it ends (polled, 10 s at most): every successor ends at
    // created_at + 2 s, and then the session reads expired.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut outcome = store.rotate(issued.token.expose()).await.unwrap();
    while let Rotation::Rotated(next) = outcome {
        assert_eq!(next.expires_at, created + Duration::from_secs(2));
        assert!(std::time::Instant::now() < deadline, "never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
        outcome = store.rotate(next.token.expose()).await.unwrap();
    }
    assert!(matches!(outcome, Rotation::Expired), "{outcome:?}");
    drop(store);
    drop_member(&db, &role, app).await;
}

#[tokio::test]
async fn a_bound_session_rotates_only_for_its_client_and_key() {
    let db = TestDb::migrated().await;
    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));
    let bound = IssueOptions::default().client_id("web").dpop_jkt(JKT);
    let issued = store.issue_with_options("cy", &bound).await.unwrap();
    let right = RotateOptions::default().client_id("web").dpop_jkt(JKT);
    let next = rotated(
        store
            .rotate_with_options(issued.token.expose(), &right)
            .await
            .unwrap(),
    );
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let wrong = [
        RotateOptions::default(),
        RotateOptions::default().client_id("web"),
        RotateOptions::default().dpop_jkt(JKT),
        RotateOptions::default().client_id("mobile").dpop_jkt(JKT),
        RotateOptions::default()
            .client_id("web")
            .dpop_jkt(OTHER_JKT),
    ];
    // The live token and the rotated one (a replay that would otherwise
    // revoke the family) both read invalid, and nothing changes.
    for token in [next.token.expose(), issued.token.expose()] {
        for options in &wrong {
            assert!(
                matches!(
                    store.rotate_with_options(token, options).await.unwrap(),
                    Rotation::Invalid
                ),
                "{options:?}"
            );
        }
    }
    assert!(matches!(
        store.rotate(next.token.expose()).await.unwrap(),
        Rotation::Invalid
    ));
    let events: Vec<i64> = column(&db.client, "SELECT count(*) FROM auth.security_events").await;
    assert_eq!(events, vec![0]);
    let sessions = store.list_sessions("cy").await.unwrap();
    assert_eq!(
        (sessions[0].generation, sessions[0].revoked_at),
        (1, None),
        "nothing changed"
    );
    assert_eq!(sessions[0].client_id.as_deref(), Some("web"));
    rotated(
        store
            .rotate_with_options(next.token.expose(), &right)
            .await
            .unwrap(),
    );

    // An unbound session stays unbound: what a rotation presents is not checked.
    let open = store.issue("cy").await.unwrap();
    let open_next = rotated(
        store
            .rotate_with_options(
                open.token.expose(),
                &RotateOptions::default().client_id("any").dpop_jkt(JKT),
            )
            .await
            .unwrap(),
    );
    rotated(store.rotate(open_next.token.expose()).await.unwrap());
    let listed = store.list_sessions("cy").await.unwrap();
    let unbound = listed
        .iter()
        .find(|s| s.session_id == open.session_id)
        .unwrap();
    assert_eq!(unbound.client_id, None);
    drop(store);
    drop_member(&db, &role, app).await;
}

/// Malformed binding or label: a clear error naming the parameter, and
/// nothing written or changed; at issue and at rotation.
#[tokio::test]
async fn malformed_bindings_and_labels_are_refused_and_change_nothing() {
    let db = TestDb::migrated().await;
    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));
    let live = store.issue("di").await.unwrap();
    let cases = [
        (IssueOptions::default().client_id(""), "p_client_id"),
        (
            IssueOptions::default().client_id("c".repeat(257)),
            "p_client_id",
        ),
        (IssueOptions::default().dpop_jkt(&JKT[1..]), "p_dpop_jkt"),
        (
            IssueOptions::default().dpop_jkt(format!("{JKT}=")),
            "p_dpop_jkt",
        ),
        (
            IssueOptions::default().dpop_jkt(JKT.replace('-', "+")),
            "p_dpop_jkt",
        ),
        (IssueOptions::default().device_label(""), "p_device_label"),
        (
            IssueOptions::default().device_label("é".repeat(101)),
            "p_device_label",
        ),
    ];
    for (options, parameter) in &cases {
        let err = store.issue_with_options("di", options).await.unwrap_err();
        let message = server_message(&err);
        assert!(message.starts_with(parameter), "{options:?}: {message}");
    }
    assert!(
        server_message(
            &store
                .issue_with_options("di", &IssueOptions::default().dpop_jkt("x".repeat(42)))
                .await
                .unwrap_err()
        )
        .contains("43 base64url characters, got 42 characters")
    );
    let labelled = store
        .issue_with_options("di", &IssueOptions::default().device_label("é".repeat(100)))
        .await
        .unwrap();
    for options in [
        RotateOptions::default().dpop_jkt("not a thumbprint"),
        RotateOptions::default().client_id("c".repeat(257)),
    ] {
        let err = store
            .rotate_with_options(live.token.expose(), &options)
            .await
            .unwrap_err();
        assert!(server_message(&err).starts_with("p_"), "{err:?}");
    }
    let sessions = store.list_sessions("di").await.unwrap();
    assert_eq!(
        sessions.len(),
        2,
        "no session was written by a refused issue"
    );
    let listed = sessions
        .iter()
        .find(|s| s.session_id == labelled.session_id)
        .unwrap();
    assert_eq!(listed.device_label.as_deref(), Some(&*"é".repeat(100)));
    let refused_rotation = sessions
        .iter()
        .find(|s| s.session_id == live.session_id)
        .unwrap();
    assert_eq!(
        refused_rotation.generation, 0,
        "the refused rotation changed nothing"
    );
    rotated(store.rotate(live.token.expose()).await.unwrap());
    drop(store);
    drop_member(&db, &role, app).await;
}

/// The device list: label, client and last use (the newest token's issue
/// time), in both clock forms.
#[tokio::test]
async fn the_device_list_shows_label_client_and_last_use() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let ttl = Duration::from_secs(DAY as u64);
    let session: uuid::Uuid = c
        .query_one(
            "SELECT session_id FROM auth.issue_token(p_user_id => 'ed', p_token_hash => sha256('e0'),
                 p_ttl => '1 day', p_now => $1, p_client_id => 'ios', p_device_label => 'iPhone')",
            &[&at(0)],
        )
        .await
        .unwrap()
        .get(0);
    let outcome: String = c
        .query_one(
            "SELECT outcome FROM auth.rotate_token(p_session_id => $1, p_generation => 0,
                 p_token_hash => sha256('e0'), p_new_token_hash => sha256('e1'), p_ttl => '1 day',
                 p_now => $2, p_client_id => 'ios')",
            &[&session, &at(HOUR)],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(outcome, "rotated");
    let fresh = simulated::issue_at(c, "ed", ttl, at(2 * HOUR))
        .await
        .unwrap();
    let listed = token_janitor::store::list_sessions_with(c, "ed", 10)
        .await
        .unwrap();
    let summary: Vec<_> = listed
        .iter()
        .map(|s| {
            (
                s.session_id,
                s.last_used_at,
                s.device_label.as_deref(),
                s.client_id.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (fresh.session_id, at(2 * HOUR), None, None),
            (session, at(HOUR), Some("iPhone"), Some("ios")),
        ]
    );

    // As the application role, on the server's clock.
    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));
    let before = server_now(c).await;
    let issued = store
        .issue_with_options(
            "fi",
            &IssueOptions::default()
                .client_id("web")
                .device_label("Firefox on Linux"),
        )
        .await
        .unwrap();
    let next = rotated(
        store
            .rotate_with_options(
                issued.token.expose(),
                &RotateOptions::default().client_id("web"),
            )
            .await
            .unwrap(),
    );
    let row = app
        .query_one(
            "SELECT session_id, last_used_at, device_label, client_id, created_at
             FROM auth.list_sessions(p_user_id => 'fi')",
            &[],
        )
        .await
        .unwrap();
    let last_used: SystemTime = row.get(1);
    let created: SystemTime = row.get(4);
    assert_eq!(row.get::<_, uuid::Uuid>(0), next.session_id);
    assert!(last_used > created && created >= before);
    assert_eq!(
        (row.get::<_, &str>(2), row.get::<_, &str>(3)),
        ("Firefox on Linux", "web")
    );
    let info = &store.list_sessions("fi").await.unwrap()[0];
    assert_eq!(
        (info.last_used_at, info.device_label.as_deref()),
        (last_used, Some("Firefox on Linux"))
    );
    drop(store);
    drop_member(&db, &role, app).await;
}

#[tokio::test]
async fn sign_out_everywhere_else_keeps_one_session() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let ttl = Duration::from_secs(DAY as u64);
    // The clock-driven form.
    let mut driven = Vec::new();
    for _ in 0..3 {
        driven.push(simulated::issue_at(c, "gu", ttl, at(0)).await.unwrap());
    }
    let revoked = simulated::revoke_user_sessions_except_at(
        c,
        "gu",
        driven[1].session_id,
        RevokeReason::Logout,
        at(HOUR),
    )
    .await
    .unwrap();
    assert_eq!(revoked, 2);
    let outcomes: Vec<bool> = {
        let mut out = Vec::new();
        for issued in &driven {
            out.push(matches!(
                simulated::rotate_at(c, issued.token.expose(), ttl, at(2 * HOUR))
                    .await
                    .unwrap(),
                Rotation::Rotated(_)
            ));
        }
        out
    };
    assert_eq!(outcomes, vec![false, true, false]);

    // The server-clock form, as the application role.
    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));
    let mine = store.issue("hal").await.unwrap();
    let others = [
        store.issue("hal").await.unwrap(),
        store.issue("hal").await.unwrap(),
    ];
    let elsewhere = store.issue("someone else").await.unwrap();
    assert_eq!(
        store
            .revoke_user_sessions_except("hal", mine.session_id, RevokeReason::Logout)
            .await
            .unwrap(),
        2
    );
    for other in &others {
        assert!(matches!(
            store.rotate(other.token.expose()).await.unwrap(),
            Rotation::Revoked
        ));
    }
    rotated(store.rotate(mine.token.expose()).await.unwrap());
    rotated(store.rotate(elsewhere.token.expose()).await.unwrap());
    let reasons: Vec<Option<RevokeReason>> = store
        .list_sessions("hal")
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.revoke_reason)
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| **r == Some(RevokeReason::Logout))
            .count(),
        2
    );
    // Without an exception, it revokes every session, as before.
    assert_eq!(
        store
            .revoke_user_sessions("hal", RevokeReason::Admin)
            .await
            .unwrap(),
        1
    );
    drop(store);
    drop_member(&db, &role, app).await;
}

/// The next notice within a deadline.
async fn next_notice(notices: &mut RevocationNotices) -> uuid::Uuid {
    tokio::time::timeout(Duration::from_secs(10), notices.next())
        .await
        .expect("a revocation notice within 10 s")
        .expect("the stream goes on")
        .unwrap()
}

#[tokio::test]
async fn every_revocation_is_notified_after_commit() {
    let db = TestDb::migrated().await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let mut notices = RevocationNotices::listen(&db.url).await.unwrap();
    let (role, url, app) = member_of(&db, "token_janitor_app").await;
    let store = TokenStore::new(url.pool(2));

    // A rolled-back revocation sends nothing: the first notice is the
    // logout that follows it.
    let rolled_back = store.issue("ivy").await.unwrap();
    app.batch_execute(&format!(
        "BEGIN; SELECT auth.revoke_session(p_session_id => '{}'); ROLLBACK;",
        rolled_back.session_id
    ))
    .await
    .unwrap();
    // Logout.
    let logout = store.issue("ivy").await.unwrap();
    store
        .revoke_session(logout.session_id, RevokeReason::Logout)
        .await
        .unwrap();
    assert_eq!(next_notice(&mut notices).await, logout.session_id);
    // A second revocation of a revoked session revokes nothing and says nothing.
    assert_eq!(
        store
            .revoke_session(logout.session_id, RevokeReason::Admin)
            .await
            .unwrap(),
        0
    );

    // Reuse detected.
    let stolen = store.issue("jo").await.unwrap();
    rotated(store.rotate(stolen.token.expose()).await.unwrap());
    assert!(matches!(
        store.rotate(stolen.token.expose()).await.unwrap(),
        Rotation::ReuseDetected
    ));
    assert_eq!(next_notice(&mut notices).await, stolen.session_id);
    // Replayed again: the family was already revoked.
    assert!(matches!(
        store.rotate(stolen.token.expose()).await.unwrap(),
        Rotation::ReuseDetected
    ));

    // User-wide (admin), all but one, then the rest.
    let mut ids = vec![rolled_back.session_id];
    for _ in 0..2 {
        ids.push(store.issue("ivy").await.unwrap().session_id);
    }
    let kept = store.issue("ivy").await.unwrap();
    assert_eq!(
        store
            .revoke_user_sessions_except("ivy", kept.session_id, RevokeReason::Admin)
            .await
            .unwrap(),
        3
    );
    let mut seen = vec![
        next_notice(&mut notices).await,
        next_notice(&mut notices).await,
        next_notice(&mut notices).await,
    ];
    seen.sort();
    ids.sort();
    assert_eq!(seen, ids, "exactly the revoked sessions, the kept one not");
    store
        .revoke_user_sessions("ivy", RevokeReason::Admin)
        .await
        .unwrap();
    assert_eq!(next_notice(&mut notices).await, kept.session_id);

    // Nothing else was sent: the next notice is a marker of this test's.
    let marker = uuid::Uuid::new_v4();
    db.client
        .execute(
            "SELECT pg_notify('token_janitor_revocations', $1)",
            &[&marker.to_string()],
        )
        .await
        .unwrap();
    assert_eq!(next_notice(&mut notices).await, marker);
    drop(store);
    drop_member(&db, &role, app).await;
}
