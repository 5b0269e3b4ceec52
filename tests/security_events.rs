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

/// The Prometheus counter as `status --format prometheus` prints it.
async fn events_total(url: &str) -> String {
    let out = run_cli_ok(&["status", "--format", "prometheus"], url).await;
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find(|l| l.starts_with("token_janitor_security_events_total "))
        .unwrap_or_else(|| panic!("no counter in {text}"))
        .to_string()
}

/// A genuine replay repeated in a loop, against a family that stays revoked,
/// keeps one event and counts the repeats (issue 28: 2,000 replays kept
/// 2,000 rows for 90 days).
#[tokio::test]
async fn a_replay_repeated_in_a_loop_keeps_one_event_and_counts_it() {
    let db = TestDb::migrated().await;
    let session = breach(&db.client, "looped", 0).await;
    db.client
        .batch_execute(&format!(
            "DO $$
             DECLARE
                 v_outcome text;
             BEGIN
                 FOR i IN 1 .. 1999 LOOP
                     SELECT r.outcome INTO v_outcome
                     FROM auth.sessions s,
                          auth.rotate_token(p_session_id => s.id, p_generation => 0,
                              p_token_hash => sha256('looped0'), p_new_token_hash => sha256('x'),
                              p_ttl => '1 day', p_now => timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second',
                              p_authenticator => auth._authenticator(s.mac_key, s.id, 0, sha256('looped0'))) r
                     WHERE s.id = '{session}';
                     IF v_outcome <> 'reuse_detected' THEN
                         RAISE EXCEPTION 'replay % read %', i, v_outcome;
                     END IF;
                 END LOOP;
             END
             $$"
        ))
        .await
        .unwrap();
    let rows: Vec<i64> = column(&db.client, "SELECT count(*) FROM auth.security_events").await;
    assert_eq!(
        rows,
        vec![1],
        "one event for the family, however often it is replayed"
    );
    let events: Vec<String> = column(
        &db.client,
        "SELECT kind || ' ' || generation || ' ' || count || ' '
                || to_char(occurred_at AT TIME ZONE 'UTC', 'HH24:MI:SS') || ' '
                || to_char(last_seen_at AT TIME ZONE 'UTC', 'HH24:MI:SS')
         FROM auth.security_events",
    )
    .await;
    assert_eq!(events, vec!["reuse_detected 0 2000 00:00:00 00:33:19"]);

    let url = cli_url(&db.url, "postgres");
    assert_eq!(
        events_total(&url).await,
        "token_janitor_security_events_total 2000"
    );
    let json: serde_json::Value =
        serde_json::from_slice(&run_cli_ok(&["status", "--json"], &url).await.stdout).unwrap();
    assert_eq!(json["security_events_recorded"], 2000);

    // Once the event is purged (the cleanup run deletes it audit_retention
    // after it was first seen), the next replay of the family, still revoked,
    // starts a new one.
    db.client
        .batch_execute("DELETE FROM auth.security_events")
        .await
        .unwrap();
    let replay = rotate(&db.client, session, 0, "looped0", "y", DAY, at(HOUR)).await;
    assert_eq!(replay, "reuse_detected");
    let events: Vec<i64> = column(&db.client, "SELECT count FROM auth.security_events").await;
    assert_eq!(events, vec![1]);
    assert_eq!(
        events_total(&url).await,
        "token_janitor_security_events_total 2001",
        "the counter never goes down"
    );
}

/// verify's self-test records events in a transaction it rolls back: the
/// counter, which the README's alert watches, does not move (issue 28: it
/// rose by 3 per verify, read from the identity's sequence).
#[tokio::test]
async fn verify_does_not_move_the_events_counter() {
    let db = TestDb::migrated().await;
    breach(&db.client, "before", 0).await;
    let url = cli_url(&db.url, "postgres");
    let before = events_total(&url).await;
    assert_eq!(before, "token_janitor_security_events_total 1");
    for _ in 0..2 {
        let out = run_cli(&["verify", "--no-schedule"], &url).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("PASS self-test"), "{stdout}");
    }
    assert_eq!(events_total(&url).await, before);
}

/// An install from before V8: its events were each seen once, and the
/// counter starts where the sequence stood, so it does not go down.
#[tokio::test]
async fn the_upgrade_keeps_the_events_and_the_counter() {
    let mut db = TestDb::empty().await;
    migrate_to(&mut db.client, 6).await;
    db.client
        .batch_execute(
            "INSERT INTO auth.security_events (occurred_at, session_id, user_id, generation, kind)
             SELECT timestamptz '2026-01-01' + i * interval '1 minute', gen_random_uuid(), 'u', 0, 'reuse_detected'
             FROM generate_series(1, 3) i",
        )
        .await
        .unwrap();
    let tx = db.client.transaction().await.unwrap();
    tx.batch_execute(
        "INSERT INTO auth.security_events (occurred_at, session_id, user_id, generation, kind)
         VALUES (now(), gen_random_uuid(), 'rolled back', 0, 'reuse_detected')",
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    token_janitor::operator::migrate(&mut db.client, &no_schedule())
        .await
        .unwrap();
    let seen: Vec<bool> = column(
        &db.client,
        "SELECT count = 1 AND last_seen_at = occurred_at FROM auth.security_events",
    )
    .await;
    assert_eq!(seen, vec![true, true, true]);
    let total: Vec<i64> = column(
        &db.client,
        "SELECT recorded_total FROM auth.security_event_summary()",
    )
    .await;
    assert_eq!(
        total,
        vec![4],
        "the sequence's last value: what status exported before"
    );
    breach(&db.client, "after", 0).await;
    let total: Vec<i64> = column(
        &db.client,
        "SELECT recorded_total FROM auth.security_event_summary()",
    )
    .await;
    assert_eq!(total, vec![5]);
}
