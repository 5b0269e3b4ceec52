//! auth.security_events: every reuse detection is recorded, append-only,
//! outlives its session, is purged by the cleanup run after
//! audit_retention, and shows in `status` as counts.

mod common;

use common::*;

/// A family whose generation 0 is replayed at `replay_s` (reuse detected).
async fn breach(client: &tokio_postgres::Client, user: &str, replay_s: i64) -> uuid::Uuid {
    let s = issue(client, user, &format!("{user}0"), DAY, at(replay_s - 60)).await;
    let t1 = format!("{user}1");
    let rotated = rotate(
        client,
        s,
        0,
        &format!("{user}0"),
        &t1,
        DAY,
        at(replay_s - 30),
    )
    .await;
    assert_eq!(rotated, "rotated");
    let replay = rotate(client, s, 0, &format!("{user}0"), "x", DAY, at(replay_s)).await;
    assert_eq!(replay, "reuse_detected");
    s
}

#[tokio::test]
async fn events_outlive_their_session_and_go_after_audit_retention() {
    let db = TestDb::migrated().await;
    let old = breach(&db.client, "old", 0).await;
    let recent = breach(&db.client, "recent", 80 * DAY).await;
    // Both families are purged a week after their revocation; the events stay.
    purge(&db.client, at(88 * DAY), None).await;
    assert_eq!(counts(&db.client).await, (0, 0));
    let kept: Vec<String> = column(
        &db.client,
        "SELECT session_id::text || ':' || kind FROM auth.security_events ORDER BY occurred_at",
    )
    .await;
    assert_eq!(
        kept,
        vec![
            format!("{old}:reuse_detected"),
            format!("{recent}:reuse_detected")
        ]
    );

    // Rows are never changed. The cleanup run (at the real clock) deletes
    // events past audit_retention and counts them.
    let message = refused(
        &db.client,
        "UPDATE auth.security_events SET kind = 'reuse_detected'",
    )
    .await;
    assert!(message.contains("append-only"), "{message}");
    db.client
        .batch_execute(
            "DELETE FROM auth.security_events WHERE user_id = 'recent';
             INSERT INTO auth.security_events (occurred_at, session_id, user_id, generation, kind)
             VALUES (now() - interval '90 days' - interval '1 minute', gen_random_uuid(), 'u', 0, 'reuse_detected'),
                    (now() - interval '89 days', gen_random_uuid(), 'u', 0, 'reuse_detected')",
        )
        .await
        .unwrap();
    db.client
        .batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let deleted: Vec<i64> = column(
        &db.client,
        "SELECT security_events_deleted FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1",
    )
    .await;
    assert_eq!(
        deleted,
        vec![2],
        "the event at T0 (2026-01-01) and the one past 90 days"
    );
    let left: Vec<String> = column(&db.client, "SELECT user_id FROM auth.security_events").await;
    assert_eq!(left, vec!["u"]);
}

#[tokio::test]
async fn status_counts_events_without_naming_anyone() {
    let db = TestDb::migrated().await;
    let session = breach(&db.client, "someone", 0).await;
    // Recent events: the replay of a token issued a minute ago, at the real clock.
    let s = issue(&db.client, "now", "n0", DAY, std::time::SystemTime::now()).await;
    rotate(
        &db.client,
        s,
        0,
        "n0",
        "n1",
        DAY,
        std::time::SystemTime::now(),
    )
    .await;
    db.client
        .batch_execute("UPDATE auth.cleanup_policy SET reuse_grace = '0'")
        .await
        .unwrap();
    let replay = rotate(
        &db.client,
        s,
        0,
        "n0",
        "n2",
        DAY,
        std::time::SystemTime::now(),
    )
    .await;
    assert_eq!(replay, "reuse_detected");

    let url = cli_url(&db.url, "postgres");
    let out = run_cli_ok(&["status", "--json"], &url).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains(&session.to_string()) && !text.contains("someone"));
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["security_events_recorded"], 2);
    assert_eq!(json["security_events"][0]["kind"], "reuse_detected");
    assert_eq!(json["security_events"][0]["last_24h"], 1);

    let out = run_cli(&["status", "--format", "prometheus"], &url).await;
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("# TYPE token_janitor_security_events_total counter\ntoken_janitor_security_events_total 2\n"), "{text}");
}
