//! The reference service (examples/reference_service) driven by an OAuth 2.0
//! client written elsewhere: Python's oauthlib and requests-oauthlib, as
//! Debian packages them (scripts/pg.sh installs them). Sign-in, a refresh
//! (RFC 6749 §6) that rotates, the replay of the old refresh token (reuse:
//! the family dies), a session bound to its client, the device list, sign
//! out everywhere else, and revocation (RFC 7009).

#[path = "../examples/reference_service/service.rs"]
mod service;

mod common;

use std::time::Duration;

use common::*;
use token_janitor::TokenStore;

#[tokio::test]
async fn an_oauth_client_library_refreshes_replays_and_revokes() {
    let db = TestDb::migrated().await;
    // A replay right after the refresh is a replay, not a retry.
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let (role, url, client) = member_of(&db, "token_janitor_app").await;
    let app =
        service::Service::new(TokenStore::new(url.pool(4)), &[("alice", "wonderland")]).router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/oauth_client.py");
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("/usr/bin/python3")
            .args([script, &base])
            .output(),
    )
    .await
    .expect("the client finishes")
    .expect("Debian's python3 with python3-requests-oauthlib (scripts/pg.sh installs it)");
    server.abort();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        seen,
        serde_json::json!({
            "signed_in": true,
            "rotated": true,
            "sessions": 1,
            "replay": "invalid_grant",
            "after_replay": "invalid_grant",
            "other_client": "invalid_grant",
            "devices": ["laptop", "phone"],
            "clients": ["reference-app"],
            "signed_out_others": 1,
            "laptop_after_sign_out": "invalid_grant",
            "phone_after_sign_out": 200,
            "revoke_status": 200,
            "after_revoke": "invalid_grant",
        }),
        "{stderr}"
    );
    let events: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM auth.security_events WHERE kind = 'reuse_detected'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(events, 1, "the replay was recorded");
    let revoked: Vec<String> = column(
        &db.client,
        "SELECT coalesce(revoke_reason, 'live') FROM auth.sessions ORDER BY created_at",
    )
    .await;
    assert_eq!(
        revoked,
        ["reuse_detected", "logout", "live", "logout"],
        "the replayed family, the laptop signed out by the phone, the phone, the revoked token's"
    );
    drop_member(&db, &role, client).await;
}
