//! `auth.purge_refresh_tokens` against a model of docs/design.md §5: exactly the
//! due rows go, counted by kind, to the second; live tokens never; breach
//! detection survives the purge.

mod common;

use std::collections::BTreeSet;
use std::time::SystemTime;

use common::*;
use rstest::rstest;

/// Retentions in seconds: (expired, revoked, rotated).
type Policy = (i64, i64, i64);
const DEFAULT_POLICY: Policy = (DAY, 7 * DAY, HOUR);

#[derive(Debug, Clone)]
struct Row {
    session: usize,
    generation: i32,
    expires_at: i64,
    revoked: Revocation,
}

#[derive(Debug, Clone)]
struct Session {
    generation: i32,
    refresh_expires_at: i64,
    revoked: Revocation,
}

/// Which kind a token row is due as at `now`, or None (docs/design.md §5).
fn due(row: &Row, (expired, revoked, rotated): Policy, now: i64) -> Option<&'static str> {
    if row.expires_at < now - expired {
        return Some("expired");
    }
    match row.revoked {
        Some((at, "rotated")) if at < now - rotated => Some("rotated"),
        Some((at, reason)) if reason != "rotated" && at < now - revoked => Some("revoked"),
        _ => None,
    }
}

fn session_dead(s: &Session, (expired, revoked, _): Policy, now: i64) -> bool {
    s.refresh_expires_at < now - expired || s.revoked.is_some_and(|(at, _)| at < now - revoked)
}

/// A family: its session's revocation and one (expires_at, revocation) per
/// generation; the session's generation and expiry follow its newest token.
type Revocation = Option<(i64, &'static str)>;

fn push_family(
    sessions: &mut Vec<Session>,
    rows: &mut Vec<Row>,
    revoked: Revocation,
    tokens: &[(i64, Revocation)],
) {
    let (newest_expiry, _) = tokens[tokens.len() - 1];
    sessions.push(Session {
        generation: tokens.len() as i32 - 1,
        refresh_expires_at: newest_expiry,
        revoked,
    });
    for (generation, (expires_at, revoked)) in tokens.iter().enumerate() {
        rows.push(Row {
            session: sessions.len() - 1,
            generation: generation as i32,
            expires_at: *expires_at,
            revoked: *revoked,
        });
    }
}

/// Sessions and tokens in every state, with timestamps a second either side
/// of each retention boundary at `now`.
fn world((expired, revoked, rotated): Policy, now: i64) -> (Vec<Session>, Vec<Row>) {
    let (mut sessions, mut rows) = (Vec::new(), Vec::new());
    let far = now + 30 * DAY;
    for offset in -2..=2 {
        let (e, r, t) = (
            now - expired + offset,
            now - revoked + offset,
            now - rotated + offset,
        );
        // A family whose only token expired around the boundary.
        push_family(&mut sessions, &mut rows, None, &[(e, None)]);
        // A family logged out around the boundary.
        let logout = Some((r, "logout"));
        push_family(&mut sessions, &mut rows, logout, &[(far, logout)]);
        // A live family whose generation 0 was rotated around the boundary.
        push_family(
            &mut sessions,
            &mut rows,
            None,
            &[(far, Some((t, "rotated"))), (far, None)],
        );
        // A family revoked for reuse around the boundary, with a rotated row.
        let reuse = Some((r, "reuse_detected"));
        push_family(
            &mut sessions,
            &mut rows,
            reuse,
            &[(far, Some((r - 60, "rotated"))), (far, reuse)],
        );
    }
    // Live tokens at the edge: expiring exactly now, and in a second.
    for e in [now, now + 1] {
        push_family(&mut sessions, &mut rows, None, &[(e, None)]);
    }
    // An expired token that was also revoked by an admin long ago.
    let old = now - expired - revoked - DAY;
    let admin = Some((old - DAY, "admin"));
    push_family(&mut sessions, &mut rows, admin, &[(old, admin)]);
    (sessions, rows)
}

async fn seed(
    client: &tokio_postgres::Client,
    sessions: &[Session],
    rows: &[Row],
) -> Vec<uuid::Uuid> {
    let mut ids = Vec::new();
    for s in sessions {
        let (revoked_at, reason) = s.revoked.map(|(t, r)| (Some(at(t)), Some(r))).unzip();
        let id: uuid::Uuid = client
            .query_one(
                "INSERT INTO auth.sessions (user_id, created_at, generation, refresh_expires_at, revoked_at, revoke_reason)
                 VALUES ('u', $1, $2, $3, $4, $5) RETURNING id",
                &[&at(-60 * DAY), &s.generation, &at(s.refresh_expires_at), &revoked_at.flatten(), &reason.flatten()],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    for r in rows {
        let (revoked_at, reason) = r.revoked.map(|(t, r)| (Some(at(t)), Some(r))).unzip();
        client
            .execute(
                "INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at, revoke_reason)
                 VALUES ($1, $2, sha256($3::text::bytea), $4, $5, $6, $7)",
                &[&ids[r.session], &r.generation, &format!("{}-{}", r.session, r.generation),
                  &at(-60 * DAY), &at(r.expires_at), &revoked_at.flatten(), &reason.flatten()],
            )
            .await
            .unwrap();
    }
    ids
}

async fn set_policy(client: &tokio_postgres::Client, (expired, revoked, rotated): Policy) {
    client
        .execute(
            "UPDATE auth.cleanup_policy SET expired_retention = make_interval(secs => $1),
                 revoked_retention = make_interval(secs => $2), rotated_retention = make_interval(secs => $3)",
            &[&(expired as f64), &(revoked as f64), &(rotated as f64)],
        )
        .await
        .unwrap();
}

async fn surviving(
    client: &tokio_postgres::Client,
) -> (BTreeSet<(uuid::Uuid, i32)>, BTreeSet<uuid::Uuid>) {
    let tokens = client
        .query(
            "SELECT session_id, generation FROM auth.refresh_tokens",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let sessions = column(client, "SELECT id FROM auth.sessions").await;
    (tokens, sessions.into_iter().collect())
}

/// Invariants 1 and 2: exactly the model's due rows are deleted, counted by
/// kind, a second either side of every boundary, for default and zero
/// retention, in one call and in small batches.
#[rstest]
#[case::defaults_all_at_once(DEFAULT_POLICY, None)]
#[case::defaults_in_batches_of_3(DEFAULT_POLICY, Some(3))]
#[case::zero_retention(( 0, 0, 0), None)]
#[case::zero_retention_in_batches_of_1((0, 0, 0), Some(1))]
#[case::rotated_kept_longer_than_revoked((HOUR, HOUR, 2 * DAY), Some(4))]
#[tokio::test]
async fn exactly_the_due_rows_are_deleted(#[case] policy: Policy, #[case] limit: Option<i32>) {
    let db = TestDb::migrated().await;
    let c = &db.client;
    set_policy(c, policy).await;
    let now = 100 * DAY;
    let (sessions, rows) = world(policy, now);
    let ids = seed(c, &sessions, &rows).await;

    let mut expected = [0i64; 3];
    let mut tokens_left = BTreeSet::new();
    for r in &rows {
        match due(r, policy, now) {
            Some("expired") => expected[0] += 1,
            Some("revoked") => expected[1] += 1,
            Some(_) => expected[2] += 1,
            None => {
                tokens_left.insert((ids[r.session], r.generation));
            }
        }
    }
    let sessions_left: BTreeSet<uuid::Uuid> = sessions
        .iter()
        .enumerate()
        .filter(|(i, s)| {
            !session_dead(s, policy, now) || tokens_left.iter().any(|(id, _)| *id == ids[*i])
        })
        .map(|(i, _)| ids[i])
        .collect();
    assert!(
        expected.iter().all(|&n| n > 0),
        "the world has rows of every kind due: {expected:?}"
    );

    let mut total = (0, 0, 0, 0);
    loop {
        let (e, r, t, s) = purge(c, at(now), limit).await;
        if let Some(limit) = limit {
            assert!(
                e + r + t <= limit as i64,
                "a batch deletes at most p_limit rows"
            );
        }
        total = (total.0 + e, total.1 + r, total.2 + t, total.3 + s);
        if e + r + t + s == 0 {
            break;
        }
    }
    assert_eq!(
        (total.0, total.1, total.2),
        (expected[0], expected[1], expected[2])
    );
    assert_eq!(total.3, (sessions.len() - sessions_left.len()) as i64);
    assert_eq!(surviving(c).await, (tokens_left, sessions_left));
}

/// Invariant 1 through the lifecycle functions: with zero retention, a purge
/// at any moment leaves every live token and its session rotatable.
#[tokio::test]
async fn live_tokens_survive_zero_retention() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    set_policy(c, (0, 0, 0)).await;
    let mut families = Vec::new();
    for i in 0..20 {
        let s = issue(c, "u", &format!("{i}-0"), HOUR, at(0)).await;
        for g in 0..(i % 4) {
            let outcome = rotate(
                c,
                s,
                g,
                &format!("{i}-{g}"),
                &format!("{i}-{}", g + 1),
                HOUR,
                at(60 * (g as i64 + 1)),
            )
            .await;
            assert_eq!(outcome, "rotated");
        }
        families.push((s, i % 4, i));
    }
    // The newest tokens expire at 60*gen + 1h: purge exactly at the earliest expiry.
    let now = HOUR;
    purge(c, at(now), None).await;
    for (s, g, i) in families {
        let outcome = rotate(c, s, g, &format!("{i}-{g}"), "next", HOUR, at(now)).await;
        assert_eq!(outcome, "rotated", "family {i} lost its live token");
    }
}

/// Invariant 3: replaying a rotated token reads reuse_detected before and
/// after its row is purged, and a purge never turns a rejection into an
/// acceptance.
#[tokio::test]
async fn breach_detection_survives_the_purge() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    let victim = issue(c, "v", "g0", 30 * DAY, at(0)).await;
    assert_eq!(
        rotate(c, victim, 0, "g0", "g1", 30 * DAY, at(15 * MINUTE)).await,
        "rotated"
    );
    assert_eq!(
        rotate(c, victim, 1, "g1", "g2", 30 * DAY, at(30 * MINUTE)).await,
        "rotated"
    );

    // Before the purge, inside a transaction that is rolled back: reuse.
    let before = {
        c.batch_execute("BEGIN").await.unwrap();
        let outcome = rotate(c, victim, 0, "g0", "x", 30 * DAY, at(3 * HOUR)).await;
        c.batch_execute("ROLLBACK").await.unwrap();
        outcome
    };
    assert_eq!(before, "reuse_detected");
    assert_eq!(
        rotate(c, victim, 0, "nope", "x", 30 * DAY, at(3 * HOUR)).await,
        "invalid"
    );

    let (_, _, rotated, _) = purge(c, at(2 * HOUR), None).await;
    assert_eq!(rotated, 2, "generations 0 and 1 are gone");
    // The one documented change: a wrong hash for a purged generation.
    c.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        rotate(c, victim, 0, "nope", "x", 30 * DAY, at(3 * HOUR)).await,
        "reuse_detected"
    );
    c.batch_execute("ROLLBACK").await.unwrap();
    // Unknown generations stay unknown, the live token still works once.
    assert_eq!(
        rotate(c, victim, 7, "g7", "x", 30 * DAY, at(3 * HOUR)).await,
        "unknown"
    );
    assert_eq!(
        rotate(c, victim, 1, "g1", "x", 30 * DAY, at(3 * HOUR)).await,
        "reuse_detected"
    );
    // The replay revoked the family: the holder of g2 is out, before and after purges.
    assert_eq!(
        rotate(c, victim, 2, "g2", "g3", 30 * DAY, at(3 * HOUR)).await,
        "revoked"
    );
    purge(c, at(3 * HOUR), None).await;
    assert_eq!(
        rotate(c, victim, 0, "g0", "x", 30 * DAY, at(4 * HOUR)).await,
        "reuse_detected"
    );
    assert_eq!(
        rotate(c, victim, 2, "g2", "g3", 30 * DAY, at(4 * HOUR)).await,
        "revoked"
    );
    // Once the whole family is purged, everything about it is unknown, never accepted.
    purge(c, at(40 * DAY), None).await;
    assert_eq!(counts(c).await, (0, 0));
    assert_eq!(
        rotate(c, victim, 2, "g2", "g3", 30 * DAY, at(40 * DAY)).await,
        "unknown"
    );
}

/// Rows revoked at the same instant (a user-wide revocation) still purge in
/// batches of exactly p_limit.
#[tokio::test]
async fn ties_on_the_timestamp_still_make_full_batches() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    for i in 0..25 {
        issue(c, "same", &format!("t{i}"), 30 * DAY, at(0)).await;
    }
    c.query_one(
        "SELECT auth.revoke_user_sessions(p_user_id => 'same', p_now => $1)",
        &[&at(MINUTE)],
    )
    .await
    .unwrap();
    let now: SystemTime = at(8 * DAY);
    assert_eq!(purge(c, now, Some(10)).await, (0, 10, 0, 10));
    assert_eq!(purge(c, now, Some(10)).await, (0, 10, 0, 10));
    assert_eq!(purge(c, now, Some(10)).await, (0, 5, 0, 5));
    assert_eq!(purge(c, now, Some(0)).await, (0, 0, 0, 0));
    assert_eq!(counts(c).await, (0, 0));
}

/// A mass revocation at scale: 3,000 families whose three rotated
/// generations were all revoked at one instant, 1,000 sessions revoked
/// 'admin' at that instant and 1,000 whose only token expired at one
/// instant: 11,000 due rows on two timestamps, 3,000 live tokens (which
/// expire years from now).
async fn seed_mass_revocation(c: &tokio_postgres::Client) {
    c.execute(
        "WITH p (t0, revoked, far) AS (SELECT $1::timestamptz, $2::timestamptz, $3::timestamptz),
         s AS (
             INSERT INTO auth.sessions (user_id, created_at, generation, refresh_expires_at, revoked_at, revoke_reason)
             SELECT 'mass-' || i, p.t0, CASE WHEN i <= 3000 THEN 3 ELSE 0 END,
                    CASE WHEN i > 4000 THEN p.t0 ELSE p.far END,
                    CASE WHEN i BETWEEN 3001 AND 4000 THEN p.revoked END,
                    CASE WHEN i BETWEEN 3001 AND 4000 THEN 'admin' END
             FROM p, generate_series(1, 5000) i
             RETURNING id, split_part(user_id, '-', 2)::int AS i)
         INSERT INTO auth.refresh_tokens (session_id, generation, token_hash, issued_at, expires_at, revoked_at, revoke_reason)
         SELECT s.id, g, sha256(convert_to(s.id::text || g, 'UTF8')), p.t0,
                CASE WHEN s.i > 4000 THEN p.t0 ELSE p.far END,
                CASE WHEN s.i BETWEEN 3001 AND 4000 OR s.i <= 3000 AND g < 3 THEN p.revoked END,
                CASE WHEN s.i BETWEEN 3001 AND 4000 THEN 'admin' WHEN s.i <= 3000 AND g < 3 THEN 'rotated' END
         FROM p, s, generate_series(0, 3) g
         WHERE g = 0 OR s.i <= 3000",
        &[&at(0), &at(MINUTE), &at(3650 * DAY)],
    )
    .await
    .unwrap();
    c.batch_execute("ANALYZE auth.sessions, auth.refresh_tokens")
        .await
        .unwrap();
}

/// The live tokens: (sessions, rows, rows that are generation 3).
async fn live_tokens(c: &tokio_postgres::Client) -> (i64, i64, i64) {
    let row = c
        .query_one(
            "SELECT count(DISTINCT session_id), count(*), count(*) FILTER (WHERE generation = 3)
             FROM auth.refresh_tokens WHERE revoked_at IS NULL AND expires_at > now()",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

/// Thousands of due rows on one timestamp split between batches at exactly
/// p_limit rows each, kind after kind, and no live row goes.
#[tokio::test]
async fn thousands_of_rows_on_one_timestamp_purge_in_exact_batches() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_mass_revocation(c).await;
    assert_eq!(counts(c).await, (5000, 14_000));
    let now = at(8 * DAY);
    let mut totals = (0, 0, 0, 0);
    let mut batches = Vec::new();
    loop {
        let (e, r, t, s) = purge(c, now, Some(700)).await;
        if e + r + t == 0 {
            break;
        }
        batches.push(e + r + t);
        totals = (totals.0 + e, totals.1 + r, totals.2 + t, totals.3 + s);
        assert_eq!(live_tokens(c).await, (3000, 3000, 3000));
    }
    assert_eq!(totals, (1000, 1000, 9000, 2000));
    let mut expected = vec![700; 15];
    expected.push(500);
    assert_eq!(batches, expected);
    assert_eq!(counts(c).await, (3000, 3000));
}

/// The same in a scheduled run, whose batches resume where the last one
/// ended: every count recorded exactly, nothing due left, every live token
/// still there.
#[tokio::test]
async fn a_run_purges_thousands_of_rows_on_one_timestamp_across_batches() {
    let db = TestDb::migrated().await;
    let c = &db.client;
    seed_mass_revocation(c).await;
    c.batch_execute("UPDATE auth.cleanup_policy SET batch_size = 100")
        .await
        .unwrap();
    c.batch_execute("CALL auth.run_token_cleanup()")
        .await
        .unwrap();
    let run = c
        .query_one(
            "SELECT status, batches, expired_deleted, revoked_deleted, rotated_deleted, sessions_deleted
             FROM auth.cleanup_runs ORDER BY id DESC LIMIT 1",
            &[],
        )
        .await
        .unwrap();
    let recorded: (&str, i32, i64, i64, i64, i64) = (
        run.get(0),
        run.get(1),
        run.get(2),
        run.get(3),
        run.get(4),
        run.get(5),
    );
    // 110 batches of exactly 100 rows: one row more a batch would make 109.
    assert_eq!(recorded, ("ok", 110, 1000, 1000, 9000, 2000));
    assert_eq!(live_tokens(c).await, (3000, 3000, 3000));
    assert_eq!(counts(c).await, (3000, 3000));
}

#[tokio::test]
async fn a_negative_limit_is_refused() {
    let db = TestDb::migrated().await;
    let err = db
        .client
        .query(
            "SELECT * FROM auth.purge_refresh_tokens(p_limit => -1)",
            &[],
        )
        .await
        .unwrap_err();
    assert!(err.as_db_error().unwrap().message().contains("p_limit"));
}
